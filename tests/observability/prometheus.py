"""A real Prometheus (the Debian `prometheus` package) on loopback, scraping one target and
evaluating deploy/monitoring/rules.yaml with every `for:` cut to 1 s (expressions unchanged) —
and, with ``scaled_windows``, every range and offset in minutes read as seconds (`[15m]` ->
`[15s]`), so that an alert's window passes within a test (promtool checks the real windows)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tests.observability.conftest import RULES, tool
from tests.waiting import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scale_windows(expr: str) -> str:
    """Minutes to seconds in range selectors and offsets, nothing else."""
    expr = re.sub(r"\[(\d+)m\]", r"[\1s]", expr)
    return re.sub(r"\boffset (\d+)m\b", r"offset \1s", expr)


class Prometheus:
    def __init__(self, directory: Path, target_port: int, *, scaled_windows: bool = False) -> None:
        rules = yaml.safe_load(RULES.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule["for"] = "1s"
                if scaled_windows:
                    rule["expr"] = scale_windows(rule["expr"])
        (directory / "rules.yaml").write_text(yaml.safe_dump(rules))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [
                {
                    "job_name": "dockyard",
                    "honor_labels": True,
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{target_port}"],
                            # What the Prometheus Operator's ServiceMonitor adds to a target.
                            "labels": {"namespace": "dockyard-system", "container": "operator"},
                        }
                    ],
                }
            ],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = (directory / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                tool("prometheus", "prometheus"),
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, timeout=30, interval=0.2, what="Prometheus to be ready")

    def _get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def _ready(self) -> bool:
        assert self.process.poll() is None, "prometheus exited (see prometheus.log)"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
            return bool(r.status == 200)

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/api/v1/query", query=expr)["data"]["result"]
        return result

    def firing(self, alert: str) -> list[dict[str, str]]:
        alerts = self._get("/api/v1/alerts")["data"]["alerts"]
        return [
            a["labels"]
            for a in alerts
            if a["labels"]["alertname"] == alert and a["state"] == "firing"
        ]

    def alerts(self, alert: str) -> list[dict[str, Any]]:
        """The alert's instances in any state (pending or firing); [] once it resolved."""
        alerts = self._get("/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == alert]

    def last_evaluation(self) -> float:
        """When the rule group was last evaluated (epoch seconds)."""
        (group,) = self._get("/api/v1/rules")["data"]["groups"]
        stamp = re.sub(r"(\.\d{6})\d*", r"\1", group["lastEvaluation"]).replace("Z", "+00:00")
        return datetime.fromisoformat(stamp).timestamp()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()
