#!/usr/bin/env python3
"""A small asyncio SMTP sink for bench/net/sessions when impetus-sink is not
at hand (or to cross-check it): PIPELINING, STARTTLS (with --cert/--key),
every reply but the greeting delayed by --delay ms. Prints 'port N' once
listening; counts messages; exits on SIGTERM printing the count.

usage: delay_server.py [--port 0] [--delay 200] [--cert C --key K]
"""
import argparse
import asyncio
import resource
import signal
import ssl
import sys

messages = 0


async def session(reader, writer, delay, sslctx):
    global messages

    async def reply(text):
        if delay:
            await asyncio.sleep(delay)
        writer.write(text)

    writer.write(b"220 delay.bench ESMTP\r\n")
    tls = False
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = line[:4].upper()
            if cmd in (b"EHLO", b"HELO"):
                ext = b"250-STARTTLS\r\n" if sslctx and not tls else b""
                await reply(b"250-delay.bench\r\n250-PIPELINING\r\n" + ext + b"250 8BITMIME\r\n")
            elif cmd == b"STAR" and sslctx and not tls:
                await reply(b"220 2.0.0 go ahead\r\n")
                await writer.drain()
                await writer.start_tls(sslctx)
                tls = True
            elif cmd == b"DATA":
                await reply(b"354 go ahead\r\n")
                while True:
                    l = await reader.readline()
                    if not l or l == b".\r\n":
                        break
                messages += 1
                await reply(b"250 2.0.0 ok\r\n")
            elif cmd == b"QUIT":
                await reply(b"221 bye\r\n")
                break
            else:
                await reply(b"250 ok\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=200)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sslctx = None
    if a.cert:
        sslctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        sslctx.load_cert_chain(a.cert, a.key)
    srv = await asyncio.start_server(lambda r, w: session(r, w, a.delay / 1000.0, sslctx),
                                     "127.0.0.1", a.port, backlog=4096, limit=65536)
    print("port", srv.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print("messages", messages, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
