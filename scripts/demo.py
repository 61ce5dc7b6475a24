#!/usr/bin/env python3
"""Demo (`make run`): moto + echo upstream + Envoy with envoy/envoy.yaml, all on 127.0.0.1.

  moto (AWS stand-in, SigV4/IAM checks on)  127.0.0.1:15000  secret demo/api = {"token": ...}
  echo upstream (shows received headers)    127.0.0.1:18080
  Envoy listener / admin                    127.0.0.1:10000 / 127.0.0.1:9901

Sends one request through Envoy, prints what the upstream received, then waits for Ctrl-C
(or exits at once with --once) and stops everything it started.
"""

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from harness import REPO, WASM, EchoUpstream, Envoy, Moto, port_open  # noqa: E402

MOTO_PORT, ECHO_PORT, LISTEN_PORT, ADMIN_PORT = 15000, 18080, 10000, 9901
SECRET_NAME, SECRET = "demo/api", {"token": "demo-token-123"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="exit after the first request")
    args = parser.parse_args()

    busy = [p for p in (MOTO_PORT, ECHO_PORT, LISTEN_PORT, ADMIN_PORT) if port_open(p)]
    if busy:
        print(f"port(s) {busy} on 127.0.0.1 already in use: is another demo running?")
        return 1
    if not WASM.exists():
        print(f"{WASM} missing: run `make build` (or `make run`)")
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the cleanup below

    logs = Path(tempfile.mkdtemp(prefix="aws-vault-demo-"))
    started = []
    try:
        moto = Moto(logs, port=MOTO_PORT)
        started.append(moto)
        moto.put_secret(SECRET_NAME, SECRET)
        print(f"moto       {moto.url}  secret {SECRET_NAME} = {json.dumps(SECRET)}")
        print(f"           IAM user key {moto.access_key} (SigV4 + IAM policy checks on)")
        started.append(EchoUpstream(ECHO_PORT))
        print(f"upstream   http://127.0.0.1:{ECHO_PORT}  (echoes the request headers as JSON)")
        envoy = Envoy(REPO / "envoy" / "envoy.yaml", listen_port=LISTEN_PORT,
                      admin_port=ADMIN_PORT, env=moto.credentials_env, log_dir=logs, cwd=REPO)
        started.append(envoy)
        print(f"envoy      {envoy.url}  (admin {envoy.admin_url}, log {envoy.proc.log_path})")

        r = envoy.get("/demo")
        print(f"\nGET {envoy.url}/demo -> {r.status_code}")
        if r.status_code == 200:
            seen = r.json()["headers"].get("authorization", ["(none)"])
            print(f"upstream received: authorization: {', '.join(seen)}")
        else:
            print(f"body: {r.text}\n--- Envoy log (tail)\n{envoy.log()[-3000:]}")
        if args.once:
            return 0 if r.status_code == 200 else 1

        print(f"\nTry:  curl -s {envoy.url}/anything | python3 -m json.tool")
        print(f"Logs: {logs}\nCtrl-C to stop.")
        while True:
            time.sleep(3600)
    except (RuntimeError, TimeoutError) as e:  # a process did not come up: show why
        print(f"\n{e}")
        return 1
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
    finally:
        for thing in reversed(started):
            thing.stop()


if __name__ == "__main__":
    sys.exit(main())
