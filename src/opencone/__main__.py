from opencone.cli import app

app()
