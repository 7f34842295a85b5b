from apcsim.cli.entry import entry

entry()
