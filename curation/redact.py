"""Credentials never reach run cards, lock files or job records: mask them in command lines."""

from __future__ import annotations

import re

#: Option values and URL parts that may carry credentials; never written to run cards.
_SECRET_WORD = re.compile(r"token|secret|passw|credential|api_?key|access_?key|auth", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@", re.I)
_URL_QUERY_SECRET = re.compile(
    r"(?P<key>[?&][^=&#\s]*(?:token|secret|signature|sig|key|credential|password)[^=&#\s]*=)[^&#\s]*",
    re.I,
)


def redact(text: str) -> str:
    """``text`` with URL passwords and secret-looking query values replaced by ``***``."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _URL_QUERY_SECRET.sub(lambda m: m["key"] + "***", text)


def redact_argv(argv: list[str]) -> list[str]:
    """A command line safe to record: ``--set a.token=...`` style values, ``--token X`` style
    options and credentials inside URLs become ``***``."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        opt, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if opt and _SECRET_WORD.search(opt):  # --token=X, or --token X
            out.append(f"{opt}=***" if eq else arg)
            hide_next = not eq
            continue
        key, eq2, _ = value.partition("=")  # a --set value: key.path=value
        if eq2 and _SECRET_WORD.search(key):
            out.append(f"{opt}{eq}{key}=***")
            continue
        out.append(redact(arg))
    return out
