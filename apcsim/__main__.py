from apcsim.cli.main import entry

entry()
