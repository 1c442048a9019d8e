"""The Matrix contacts: a puppet user per QQ account (name, picture, presence) and a portal room per conversation."""
