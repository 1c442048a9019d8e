"""The relay: QQ → Matrix (inbound: stored, then relayed in order per contact), Matrix → QQ (outbox: stored with SEQs, then sent in order), and the text conversion between them."""
