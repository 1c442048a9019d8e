"""The control room: the direct chat where a user logs into QQ and gives commands, the command table, contact commands, friend requests, and who may use the bridge."""
