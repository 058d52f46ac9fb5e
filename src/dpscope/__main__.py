from dpscope.cli import app

app(prog_name="dpscope")
