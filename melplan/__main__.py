from melplan.cli import run

run()
