"""The QQ sessions: one QQAccount per bridged QQ account (login, poller, SEQs), the registry of running accounts, the poll budget and login pace they share, and each QQ server's outage probe."""
