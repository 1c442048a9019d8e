"""The small world of accounts most simulator tests run against."""

# Alice needs verification, Bob lets anyone add him, Carol accepts no one, Eve needs
# verification. Lists are one-way: Dave has Alice in his list, Alice does not have Dave;
# Eve is in no list and has none.
ACCOUNTS = {
    "accounts": [
        {
            "uin": 10001,
            "password": "alice-pw",
            "nick": "Alice",
            "auth": 1,
            "face": 270,
            "friends": [10002, 10003],
            "profile": {"AG": 19, "SX": 1, "EM": "alice@example.org", "CT": "Suzhou", "BT": 1},
        },
        {"uin": 10002, "password": "bob-pw", "nick": "Bob, the builder", "face": 3, "friends": [10001]},
        {"uin": 10003, "password": "carol-pw", "nick": "卡罗尔", "auth": 2, "friends": [10001]},
        {"uin": 10004, "password": "dave-pw", "nick": "Dave", "friends": [10001]},
        {"uin": 10005, "password": "eve-pw", "nick": "Eve", "auth": 1},
    ]
}
PASSWORDS = {a["uin"]: a["password"] for a in ACCOUNTS["accounts"]}
ALICE, BOB, CAROL, DAVE, EVE = 10001, 10002, 10003, 10004, 10005
