"""Wrong password, wrong CA, an ACL that forbids the agent's topics: the agent starts anyway,
says clearly what is wrong, keeps every result, and delivers them all once the operator fixed it.

The consumer connects anonymously on the broker's plain listener (it is not under test); the
agent connects as user ``dev1`` (password cases) or over TLS on a second listener (CA case).
The fix is what an operator does: correct the password file or the CA and restart the agent
(``systemctl restart``), or correct the broker's ACL and restart the broker.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fault_kit import (
    MAX_IN_FLIGHT,
    Feeder,
    Rig,
    fault_config,
    figures,
    outbox_depth,
    record,
    tally,
    wait_until,
)
from mqtt_broker import MosquittoBroker, free_port, require_mosquitto
from tls_pki import issue, make_ca, require_openssl

FRAMES = 60
# Any log line about a failed connection or a refused message, from any of the agent's links.
FAILURE_LINE = re.compile(r"(?i)^(ERROR|WARNING).*(refused|refuses|not authori[sz]ed|TLS)")


@dataclass
class Case:
    broker: MosquittoBroker
    config: dict[str, Any]  # the agent's, wrong
    expect: re.Pattern[str]  # the log line that says what is wrong
    fix: Callable[[dict[str, Any]], object]  # makes it right (may change the config in place)
    restart: str  # what the operator restarts after the fix: "agent" or "broker"


def _passwd(folder: Path, user: str, password: str) -> Path:
    path = folder / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), user, password], check=True,
                   capture_output=True, timeout=30)  # fmt: skip
    return path


def _as_dev1(
    tmp: Path, bundle: Path, password: str, agent_password: str, options: list[str]
) -> tuple[MosquittoBroker, dict[str, Any], Path]:
    """A broker that knows ``dev1`` by ``password``; the agent's config, logging in as ``dev1``
    with ``agent_password`` read from the file returned last."""
    passwd = _passwd(tmp, "dev1", password)
    broker = MosquittoBroker(
        workdir=tmp / "broker",
        persistence=True,
        listener_options=[f"password_file {passwd}", *options],
    )
    secret = tmp / "mqtt-password"
    secret.write_text(agent_password + "\n")
    cfg = fault_config(tmp, bundle, broker)
    cfg["mqtt"] |= {"username": "dev1", "password_file": str(secret)}
    return broker, cfg, secret


def wrong_password(tmp: Path, bundle: Path) -> Case:
    broker, cfg, secret = _as_dev1(tmp, bundle, "s3cret", "not-the-password", [])
    return Case(
        broker,
        cfg,
        re.compile(r"(?i)^(ERROR|WARNING).*refused the connection.*(password|credentials)"),
        lambda _cfg: secret.write_text("s3cret\n"),
        "agent",
    )


def wrong_ca(tmp: Path, bundle: Path) -> Case:
    require_openssl()
    pki = tmp / "pki"
    make_ca(pki)
    issue(pki, "server", "broker", "IP:127.0.0.1,DNS:localhost")
    other = make_ca(pki, "other", "someone else's CA")
    tls_port = free_port()
    broker = MosquittoBroker(
        workdir=tmp / "broker",
        persistence=True,
        listener_options=[
            f"listener {tls_port} 127.0.0.1",
            f"cafile {pki / 'ca.pem'}",
            f"certfile {pki / 'server.pem'}",
            f"keyfile {pki / 'server.key'}",
        ],
    )
    cfg = fault_config(tmp, bundle, broker)
    cfg["mqtt"] |= {"port": tls_port, "tls": {"ca_file": str(other)}}

    def fix(c: dict[str, Any]) -> None:
        c["mqtt"]["tls"]["ca_file"] = str(pki / "ca.pem")

    return Case(broker, cfg, re.compile(r"^(ERROR|WARNING).*TLS.*not signed by"), fix, "agent")


def forbidding_acl(tmp: Path, bundle: Path) -> Case:
    acl = tmp / "acl"
    # Anonymous (the consumer) may read everything; dev1 only read its own topics.
    acl.write_text("topic read galaxy-edge/#\n\nuser dev1\ntopic read galaxy-edge/#\n")
    broker, cfg, _ = _as_dev1(tmp, bundle, "pw", "pw", [f"acl_file {acl}"])
    return Case(
        broker,
        cfg,
        re.compile(r"(?i)^(ERROR|WARNING).*(refuses|not authori[sz]ed)"),
        lambda _cfg: acl.write_text(
            "topic read galaxy-edge/#\n\nuser dev1\ntopic readwrite galaxy-edge/#\n"
        ),
        "broker",
    )


@pytest.mark.parametrize(
    "make", [wrong_password, wrong_ca, forbidding_acl], ids=lambda f: f.__name__
)
def test_bad_credentials_are_named_and_nothing_is_lost(
    make: Callable[[Path, Path], Case],
    tmp_path: Path,
    tiny_bundle: Path,
    rig_on: Callable[[MosquittoBroker], Rig],
) -> None:
    require_mosquitto()
    case = make(tmp_path, tiny_bundle)
    broker = case.broker.start()
    try:
        rig = rig_on(broker)
        consumer = rig.consumer
        agent = rig.start_agent(case.config)  # starts, classifies, spools
        feeder = Feeder(rig.inbox, FRAMES, rate=100.0).start()
        feeder.finish()

        def said() -> list[str]:
            return [ln for ln in agent.log().splitlines() if case.expect.search(ln)]

        assert wait_until(lambda: bool(said()), 60), agent.log_tail()
        outbox = Path(case.config["mqtt"]["outbox"]["path"])
        assert wait_until(lambda: outbox_depth(outbox) >= FRAMES, 60), agent.log_tail()
        assert consumer.refs() == set(), "delivered despite the fault?"
        lines = said()
        noise = [ln for ln in agent.log().splitlines() if FAILURE_LINE.search(ln)]
        case.fix(case.config)
        if case.restart == "agent":
            assert agent.stop() == 0, agent.log_tail()
            agent = rig.start_agent(case.config)
        else:
            broker.restart()
        delivered = consumer.wait_refs(feeder.names, 120)
        t = tally(consumer, feeder.names)
        alive = agent.alive
        code = agent.stop()
    finally:
        broker.close()
    record(
        f"credentials_{make.__name__}",
        {
            "injected": make.__name__.replace("_", " "),
            **figures(t, agent, code),
            "failure_log_lines": len(noise),
            "log_line": lines[0].replace(str(tmp_path), "TMP") if lines else None,
            "fixed_by_restarting": case.restart,
        },
    )
    assert delivered and t.lost == 0, (t, agent.log_tail())
    assert alive and code == 0, agent.log_tail()
    assert t.duplicates <= MAX_IN_FLIGHT, t
    # Rate-limited: a connection failing every reconnect_max_s (0.5 s here) for tens of seconds
    # is a few lines, not one per attempt.
    assert len(noise) <= 10, noise[:25]
