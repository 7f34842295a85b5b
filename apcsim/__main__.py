from apcsim.cli import entry

entry()
