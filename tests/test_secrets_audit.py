"""The log audit itself finds what it must (so a clean audit means something)."""

from __future__ import annotations

from pathlib import Path

from devstack.stack import Stack, StackPorts, StackSettings
from tests.support.secrets_audit import audit_logs


def test_audit_finds_tokens_keys_and_signatures(tmp_path: Path) -> None:
    stack = Stack(StackSettings(root=tmp_path, ports=StackPorts.free(), media_dir=tmp_path / "m"))
    stack.prepare()
    stack.logs.mkdir(parents=True, exist_ok=True)
    token = stack.token("alice")
    secret = stack.url_signing_keys().split(",")[0].split(":")[1]
    (stack.logs / "clean.log").write_text('{"message": "denied GET /playback/demo/manifest"}\n')
    assert audit_logs(stack) == []
    signature = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    leak = f"GET /media/demo/a.ts?pdt=v1.1700000000.k1.L21lZGlhLw..{signature}"
    (stack.logs / "leaky.log").write_text(f"token={token}\nkey={secret}\n{leak}\n")
    findings = "\n".join(audit_logs(stack))
    assert "issued JWT #0" in findings
    assert "URL signing secret" in findings
    assert "a pdt URL signature" in findings
