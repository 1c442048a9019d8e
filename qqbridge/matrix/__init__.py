"""The Matrix side: the homeserver's client API as the appservice (`api`) and the
appservice's own HTTP endpoint that the homeserver calls (`appservice`)."""
