"""apcsim's tests, in folders that mirror the source (core/, policies/, sim/, engine/, ...)."""
