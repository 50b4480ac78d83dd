"""Writes the seed corpus of securechat-fuzz (Tests/Fuzz/corpus). The first byte of each
input selects the target: 0 client frame, 1 message id, 2 relay payload, 3 coordinator
frame (JSON body), 4 length-prefixed stream, 5 gateway–worker link frames (written by hand
as 5-link-*; this script does not make them). Run it again after adding seeds here."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = [
    b'{"type":"send","text":"hello"}',
    b'{"type":"send","text":"  hi there \\u00a0","ref":"c1"}',
    b'{"type":"send","text":"<img src=x onerror=alert(1)>","ref":"r","room":"lobby"}',
    b'{"type":"send","text":"' + b"x" * 2000 + b'"}',
    b'{"type":"send","text":"' + b"x" * 2001 + b'"}',
    b'{"type":"send","text":"   "}',
    b'{"type":"send","text":"\\ud83d\\ude00 caf\\u00e9 e\\u0301"}',
    b'{"type":"send","text":1e999}',
    b'{"type":"send","text":"a","text":"b"}',
    b'{"type":"send","text":"a","ref":' + b'"' + b"r" * 129 + b'"}',
    b'{"type":"send","text":"a","room":"other"}',
    b'{"type":"sync","since":"1700000000000-3"}',
    b'{"type":"create_room","name":"Dev-Team","kind":"private","encrypted":true,"title":"Dev","ref":"c"}',
    b'{"type":"send","room":"dm:alice:bob","e2ee":{"v":1,"c":"AAAA"},"reply_to":"1-0"}',
    b'{"type":"react","room":"dev","id":"1-0","emoji":"\ud83d\udc4d","on":false}',
    b'{"type":"history","room":"dev","before":"5-0","limit":100}',
    b'{"type":"history","room":"dev","limit":true}',
    b'{"type":"invite","room":"dev","user":"b\u00f6b"}',
    b'{"type":"edit","room":"dev","id":"1-0","text":"fixed"}',
    b'{"type":"sync","since":"18446744073709551616-0"}',
    b'{"type":"sync","since":"007"}',
    b'{"type":"typing"}',
    b'{"type":["send"]}',
    b'[' * 200 + b']' * 200,
    b'{"a":' * 100 + b'1' + b'}' * 100,
    b'{"type":"send","text":"\xff\xfe"}',
    b'null',
]
IDS = [b"1-0", b"1700000000000-42", b"18446744073709551615-18446744073709551615", b"007", b"1-2-3", b"-1", b"", b"1-"]
RELAY = [b'm\n1-0\nalice\n"text":"hello"', b'm\n2-0\nbob\n"text":"line one\\nline two"', b"m\n3-0\nbob\n",
         b'e\n{"type":"member","room":"dev","user":"a","joined":true}', b't\nbob\n{"type":"typing"}', b"x\n1-0"]
COORD = [
    b'{"request":{"id":1,"_1":{"status":{}}}}',
    b'{"request":{"id":2,"_1":{"rateCheck":{"kind":"message","key":"alice","consume":true}}}}',
    b'{"request":{"id":3,"_1":{"register":{"worker":"w1","address":"unix:/tmp/w.sock","connections":[{"id":"c1","user":"alice"}]}}}}',
    b'{"request":{"id":4,"_1":{"route":{"exclude":["w1"]}}}}',
    b'{"response":{"id":5,"_1":{"rate":{"allowed":false,"retryAfterMs":250}}}}',
    b'{"response":{"id":6,"_1":{"workers":{"_0":[{"id":"w1","address":"a","load":3}]}}}}',
    b'{"presence":{"user":"bob","online":true}}',
    b'{"presenceSnapshot":{"online":["alice","bob"]}}',
    b'{"request":{"id":-1,"_1":{"status":{}}}}',
]
FRAMES = [
    struct.pack(">I", 5) + b"hello" + struct.pack(">I", 0),
    b"\x02" + struct.pack(">I", 3) + b"abc" + struct.pack(">I", 2) + b"de",
    struct.pack(">I", 65) + b"z" * 65,
    struct.pack(">I", 0xFFFFFFFF),
    b"\x00\x00\x00",
]


def main():
    out = os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if not name.startswith("5-link-"):
            os.remove(os.path.join(out, name))
    for target, (label, seeds) in enumerate([("client", CLIENT), ("id", IDS), ("relay", RELAY), ("coord", COORD), ("frames", FRAMES)]):
        for i, seed in enumerate(seeds):
            with open(os.path.join(out, "%d-%s-%02d" % (target, label, i)), "wb") as f:
                f.write(bytes([target]) + seed)


if __name__ == "__main__":
    main()
