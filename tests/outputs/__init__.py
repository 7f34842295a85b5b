"""apcsim/outputs: the HTML reports as a browser renders them."""
