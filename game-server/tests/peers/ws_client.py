"""Third-party peer: drives the game server with the `websockets` library.

Usage: ws_client.py HOST:PORT ALLOWED_ORIGIN
Exits 0 and prints "PEER OK" when both encodings behave as PROTOCOL.md says.
"""
import asyncio
import json
import struct
import sys
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

ADDR, ORIGIN = sys.argv[1], sys.argv[2]
TIMEOUT = 20  # hang guard only


def login(player):
    req = urllib.request.Request(
        f"http://{ADDR}/login",
        data=json.dumps({"player": player}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        return json.load(r)["token"]


async def recv_json(ws, want):
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if msg["t"] == "ping":
            await ws.send(json.dumps({"t": "pong", "id": msg["id"]}))
            continue
        if msg["t"] == want:
            return msg


async def json_peer():
    token = login("py-json")
    async with connect(
        f"ws://{ADDR}/ws?token={token}", subprotocols=["ks.json.v1"], origin=ORIGIN
    ) as ws:
        assert ws.subprotocol == "ks.json.v1", ws.subprotocol
        welcome = await recv_json(ws, "welcome")
        assert welcome["player"] == "py-json", welcome
        await ws.send(json.dumps({"t": "join", "room": "pyroom"}))
        joined = await recv_json(ws, "joined")
        me = joined["you"]
        assert any(e["id"] == me for e in joined["ents"]), joined
        await ws.send(json.dumps({"t": "input", "seq": 1, "dx": 1, "dy": 1, "collect": True}))
        while True:
            d = await recv_json(ws, "delta")
            if d["ack"] == 1:
                assert d["gold"] == 1, d
                break
        await ws.send(json.dumps({"t": "ping", "id": 42, "ts": 1234}))
        pong = await recv_json(ws, "pong")
        assert pong == {"t": "pong", "id": 42, "ts": 1234}, pong
        await ws.send(json.dumps({"t": "leave"}))
        left = await recv_json(ws, "left")
        assert left["room"] == "pyroom", left
        return me


async def recv_bin(ws, want):
    while True:
        msg = await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert isinstance(msg, bytes), "binary session got a text frame"
        if msg[0] == 0x85:  # server ping -> pong
            (pid,) = struct.unpack_from("<I", msg, 1)
            await ws.send(struct.pack("<BI", 0x05, pid))
            continue
        if msg[0] == want:
            return msg


async def binary_peer(other_entity):
    token = login("py-bin")
    async with connect(
        f"ws://{ADDR}/ws?token={token}", subprotocols=["ks.bin.v1"], origin=ORIGIN
    ) as ws:
        assert ws.subprotocol == "ks.bin.v1", ws.subprotocol
        await recv_bin(ws, 0x81)
        room = b"pyroom"
        await ws.send(struct.pack("<BB", 0x01, len(room)) + room)
        j = await recv_bin(ws, 0x82)
        n = j[1]
        assert j[2 : 2 + n] == room
        (you, tick, gold, resumed) = struct.unpack_from("<IQqB", j, 2 + n)
        assert gold == 0 and resumed == 0
        await ws.send(struct.pack("<BIbbB", 0x03, 7, -1, 0, 1))
        while True:
            d = await recv_bin(ws, 0x83)
            tick, ack, ts, gold = struct.unpack_from("<QIQq", d, 1)
            if ack == 7:
                assert gold == 1
                (count,) = struct.unpack_from("<H", d, 29)
                ents = [struct.unpack_from("<IBff", d, 31 + 13 * i) for i in range(count)]
                assert any(e[0] == you for e in ents), ents
                break


async def bad_origin():
    token = login("py-evil")
    try:
        async with connect(f"ws://{ADDR}/ws?token={token}", origin="https://evil.example"):
            raise AssertionError("a foreign origin was accepted")
    except InvalidStatus as e:
        assert e.response.status_code == 403, e.response.status_code


async def main():
    me = await json_peer()
    await binary_peer(me)
    await bad_origin()
    print("PEER OK")


asyncio.run(main())
