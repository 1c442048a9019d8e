"""The bridge core: who may use it, the control room and its commands, and each bridged
QQ account's session and poller. It sees Matrix and QQ only through the small
interfaces in `ports`."""
