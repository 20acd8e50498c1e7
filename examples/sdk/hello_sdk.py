"""A script written for microsandbox, unchanged: it runs against kubesandbox's gateway with
nothing but the three environment variables of the SDK's cloud backend:

    MSB_BACKEND=cloud
    MSB_API_URL=$(cat .kubesandbox/gateway-url)/ns/default
    MSB_API_KEY=$(cat .kubesandbox/token)

(``make up`` writes both files; see README.md.) The test suite runs it exactly so.
"""

import asyncio
import hashlib

from microsandbox import Patch, Sandbox, Volume


async def main() -> None:
    sandbox = await Sandbox.create(
        "hello-sdk",
        image="busybox:1.36",
        env={"GREETING": "Hello"},
        workdir="/app",
        scripts={"greet": '#!/bin/sh\necho "$GREETING from $(hostname), in $(pwd)"\n'},
        patches=[Patch.text("/etc/motd", "Welcome to a microVM.\n")],
        volumes={"/scratch": Volume.tmpfs(size_mib=16)},
    )
    try:
        greeting = await sandbox.exec("greet")
        print(greeting.stdout_text.strip())

        kernel = await sandbox.shell("cat /etc/motd; uname -sr")
        print(kernel.stdout_text.strip())

        payload = b"some bytes, written from the host\n" * 1000
        await sandbox.fs.write("/scratch/payload.bin", payload)
        digest = await sandbox.shell("sha256sum /scratch/payload.bin")
        ours = hashlib.sha256(payload).hexdigest()
        theirs = digest.stdout_text.split()[0]
        print(f"sha256 of the payload matches inside the VM: {ours == theirs}")
    finally:
        await sandbox.stop()
        await Sandbox.remove("hello-sdk")
    print("removed hello-sdk")


if __name__ == "__main__":
    asyncio.run(main())
