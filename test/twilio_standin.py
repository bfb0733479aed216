#!/usr/bin/env python3
"""Local stand-in for Twilio's Messages API (create, fetch, delete, list), used by the TAP tests.

This file owns the fake Twilio HTTP server only; test/perl/TwilioStandIn.pm owns
starting it and talking to its control endpoints from Perl.  Python 3.11
standard library only; listens on 127.0.0.1 only.

Usage:
    python3 test/twilio_standin.py --port 0 --port-file /tmp/port [--quiet]
        [--fault-rate r --fault-mix modes --fault-hang s --fault-seed n]
Runs until SIGTERM/SIGINT, then exits 0.  --port 0 picks a free port; the bound
port is written to --port-file (atomically) once the socket is listening.

Twilio endpoint:
    POST /2010-04-01/Accounts/{AccountSid}/Messages.json  (form-urlencoded)
        Every request is recorded, then answered with the first action found in:
        the FIFO script for its To, the default FIFO script, the steady action.
        Per-sender rate limits (see /_config) are checked before any script.

Actions (JSON objects):
    {"status": 201 [, "twilio_status": "accepted"|"queued"] [, "delay": s]}
    {"status": >=400 [, "code": n] [, "message": str] [, "retry_after": str] [, "delay": s]}
        Twilio-shaped error body; "code" defaults to 21211 (400), 20003 (401),
        20404 (404), 20429 (429), 20500 (5xx).  retry_after adds Retry-After.
    {"hang": s}          read the request, sleep s seconds, then answer 201
    {"stall_body": s}    create the message, send 201's headers (the whole body's
                         Content-Length) and half the body, sleep s seconds, close
    {"reset": true}      read the request, then close the socket with an RST
    {"malformed": true}  answer 201 with a truncated JSON body
    {"raw": {"status": n, "headers_b64": [...], "body_b64": str}}
                         answer exactly these bytes, whatever they are (a broken
                         Twilio or proxy): each header line (name: value, no CRLF)
                         and the body base64-encoded; Content-Length is added
    {"callback_first": [{"status": st [, "error_code": n]}, ...], "auth_token": str
     [, "then": action] [, "gate": name]}
                         Twilio's status callbacks overtaking the create's answer:
                         create the message, post each callback (signed with
                         auth_token) to the request's StatusCallback, each only
                         once the one before was answered, and only then perform
                         "then" (default {"status": 201}) with that message: a 201
                         (its SID), an error status, {"reset": true}, or a fault
                         create_500, create_close, create_hang.  With "gate", the
                         callbacks are posted in the background and the create
                         waits until POST /_gate opens that gate instead.  The
                         callbacks' answers are recorded with the request
                         ("callbacks": [{"status", "http", "body"}]).
    {"fault": mode [, "hang": s] [, "callbacks": false]}
                         what makes a send ambiguous, or looks like it does:
        create_500    create the message, then answer 500 (code 20500)
        create_hang   create it, answer nothing for hang seconds (default 10), close
        create_close  read the whole request, create it, close without answering
        close_early   close (RST) without creating it; drawn at random it closes
                      before the body is read, scripted (its To is in the body)
                      after; a client whose small body sits in the kernel's
                      buffers cannot tell the two apart
        429           answer 429 (code 20429), nothing created (Twilio: never processed)
        503           answer 503 (code 20500) before creating anything
        A message created by a fault is stored, listed, counted (GET /_created)
        and gets status callbacks (if configured) like any other, unless
        "callbacks": false.
    Random faults (--fault-rate r --fault-mix create_500:2,429,... --fault-hang s
    --fault-seed n, or POST /_faults) answer a share r of the creates that no
    script answers; the draw happens before any script is looked at.

    GET /2010-04-01/Accounts/{AccountSid}/Messages.json
        The list resource: the account's messages (every one created and not
        deleted), newest first by date_created (whole seconds) then sid, each
        shaped like the create answer.  Stored messages carry date_sent = their
        date_created (the stand-in "sends" at once) unless told otherwise.
        Filters To, From (exact), DateSent, DateSent<, DateSent> (YYYY-MM-DD,
        against date_sent's UTC date, < on or before, > on or after; a message
        with no date_sent never matches one).  PageSize 1..1000 (default 50),
        Page (echoed; > 0 needs a PageToken), PageToken PA<sid> (the page after
        that message) or PB<sid> (the page before): next_page_uri (null on the
        last page), previous_page_uri, first_page_uri, uri, page, page_size,
        start, end.  Invalid parameters: 400, code 20001.  Recorded (GET
        /_lists); scripted errors (POST /_list_script) answer first.

    POST /2010-04-01/Accounts/{AccountSid}/Calls.json  (form-urlencoded; voice calls)
        Recorded and scripted by To exactly as Messages.json (GET /_requests
        shows the path); a 201 answers with a Call resource (sid CA + 32 hex,
        status "queued"), and with /_callbacks configured the call's status
        callback follows: CallSid, CallStatus "completed" unless
        "call_outcomes" names its To (busy, no-answer, failed, canceled).

    GET    /2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}.json
    DELETE /2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}.json
        Fetch or delete a message this stand-in created (201) under that
        account: 200 with the Message resource carrying the status it was last
        told (POST /_message_status; at first the status it was created with),
        204 once deleted; 404 (code 20404) for a SID it does not know (or
        deleted).  Every such request is recorded (GET /_lookups); a scripted
        lookup action (POST /_lookup_script) answers instead when one is queued.

Control endpoints (JSON in and out):
    POST /_script   {"to": "+1...", "actions": [...]} | {"default": [...]} | {"steady": {...}}
    POST /_config   {"rates": {"<From or MessagingServiceSid>": per_second, ...}, "burst": n}
    GET  /_requests[?to=+1...]   recorded requests (a literal '+' in ?to= is kept)
    POST /_message_status {"sid": "SM...", "status": "delivered" [, "error_code": n] [, "error_message": s]}
    POST /_lookup_script  {"actions": [{"status": >=400 [, "code": n] [, "retry_after": s]}, ...]}
                          and/or {"delay": s}
                    FIFO answers for the next fetches and deletions, whatever SID;
                    delay: every fetch and deletion answers that many seconds late
    GET  /_lookups  recorded fetches and deletions: {"t", "method", "sid", "account_sid",
                    "status", "auth_user", "concurrent"} (concurrent: fetches and
                    deletions in progress when it arrived, itself included)
    POST /_messages {"account_sid", "to" [, "from"] [, "messaging_service_sid"] [, "body"]
                     [, "status" (default "sent")] [, "date_created" (ISO 8601 or RFC 2822)]
                     [, "date_sent" (default date_created; null: not sent yet)]
                     [, "idempotency_key"] [, "outbox_id"]}
                    a message created "at Twilio" without a request: {"ok", "sid"}
    POST /_message_status accepts "date_sent" too (null: not sent yet)
    POST /_list_script {"actions": [{"status": >=400 [, "code"] [, "retry_after"]}, ...]}
                    FIFO answers for the next list requests
    GET  /_lists    recorded list requests: {"t", "account_sid", "query", "auth_user",
                    "status", "count"}
    GET  /_created  {"total": n, "by_key": {idempotency key: n}, "by_outbox_id": {id: n},
                     "sids_by_key": {key: [sid, ...]}, "sids_by_outbox_id": {id: [sid, ...]}}:
                    messages created (deleted ones too), per Idempotency-Key header
                    (--idempotency-header) and per outbox_id of the StatusCallback URL
    POST /_faults   {"rate": r, "mix": {mode: weight} | "create_500:2,...", "hang": s, "seed": n}
    GET  /_faults   that configuration and {"injected": {mode: n}} (scripted faults too)
    POST /_concurrency {"others": n, "limit": m | null}
                    Twilio-Concurrent-Requests reports the requests in progress plus
                    n (other clients of the account); with a limit, a create that
                    arrives when the creates in progress (itself included) plus n
                    exceed it is answered 429 (code 20429) before any script.  Each
                    recorded create carries "concurrent": that count at its arrival
    POST /_gate     {"name": str}: open that gate (callback_first); a create that
                    arrives at an open gate goes straight on
    POST /_reset    clear scripts, gates, requests, rates, the steady action, messages,
                    counters and the /_concurrency settings, and turn random faults off
    GET  /_health   {"ok": true}
Anything else gets a Twilio-shaped 404 (code 20404).

Status callbacks and inbound messages, as Twilio sends them (make demo):
    POST /_callbacks {"auth_token": str, "outcomes": {"<To>": {"status": "undelivered",
                      "error_code": 30003}, ...}, "duplicate_every": n, "reverse_every": m,
                      "call_outcomes": {"<To>": "busy", ...}}
        From then on, after each 201 to a request that named a StatusCallback,
        the stand-in posts that URL Twilio's status callbacks for the message,
        signed with auth_token (X-Twilio-Signature): 'sent', then its outcome
        ('delivered' unless "outcomes" names its To).  Every n-th such message
        gets each callback twice; every m-th its final status before 'sent'.
        Sent by a few threads, so they may also arrive in any order.
    GET  /_callbacks  {"messages": n, "queued": n, "posted": n, "answers": {"200": n, ...}}
    POST /_inbound   {"url": str, "auth_token": str, "account_sid": str, "from": "+1...",
                      "to": "+1...", "body": "STOP"}
        Posts a signed incoming message to url; answers {"status": n, "body": str}.
"""

import argparse
import base64
import collections
import email.utils
import json
import hashlib
import hmac
import http.client
import math
import os
import queue
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_VERSION = "2010-04-01"
MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$")
MESSAGE_PATH = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages/([A-Za-z0-9]+)\.json$")
CALLS_PATH = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Calls\.json$")
CALL_FINAL = ("completed", "busy", "no-answer", "failed", "canceled")
SEGMENT_CHARS = 160
STEADY_201 = {"status": 201}
RATE_LIMITED = {"status": 429, "rate_limited": True}
MALFORMED_BODY = b'{"sid": "SM12'

DEFAULT_CODES = {400: 21211, 401: 20003, 404: 20404, 429: 20429}
DEFAULT_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    21211: "The 'To' number is not a valid phone number.",
}

SUCCESS_KEYS = {"status", "twilio_status", "delay"}

# Faults a create can meet.  The first three create the message and then lose
# the answer (what makes a send ambiguous); the last three never create it.
FAULT_MODES = {
    "create_500": "create the message, then answer 500 (code 20500)",
    "create_hang": "create the message, then answer nothing for `hang` seconds and close",
    "create_close": "read the whole request, create the message, close without answering",
    "close_early": "close (RST) before reading the request body; nothing created",
    "429": "answer 429 (code 20429) without creating, as Twilio's rate limit does",
    "503": "answer 503 (code 20500) before creating",
}
CREATING_FAULTS = {"create_500", "create_hang", "create_close"}
DEFAULT_FAULT_HANG = 10.0
ERROR_KEYS = {"status", "code", "message", "retry_after", "delay"}


class ActionError(ValueError):
    """A scripted action or config that the stand-in cannot perform."""


# --- actions -----------------------------------------------------------------

def default_code(status):
    if status in DEFAULT_CODES:
        return DEFAULT_CODES[status]
    return 20500 if status >= 500 else None


def check_keys(raw, allowed):
    unknown = set(raw) - allowed
    if unknown:
        raise ActionError(f"unknown action keys {sorted(unknown)} in {raw}")


def normalise_status_action(raw):
    status = int(raw["status"])
    if status == 201:
        check_keys(raw, SUCCESS_KEYS)
        action = {"status": 201}
        if "twilio_status" in raw:
            if raw["twilio_status"] not in ("accepted", "queued"):
                raise ActionError(f"twilio_status must be accepted or queued: {raw}")
            action["twilio_status"] = raw["twilio_status"]
    elif status >= 400:
        check_keys(raw, ERROR_KEYS)
        code = raw.get("code", default_code(status))
        if code is None:
            raise ActionError(f"status {status} needs an explicit code: {raw}")
        action = {"status": status, "code": int(code)}
        if "message" in raw:
            action["message"] = str(raw["message"])
        if "retry_after" in raw:
            action["retry_after"] = str(raw["retry_after"])
    else:
        raise ActionError(f"status must be 201 or >= 400: {raw}")
    if "delay" in raw:
        action["delay"] = float(raw["delay"])
    return action


def normalise_fault(raw):
    """{"fault": mode [, "hang": s] [, "callbacks": false]}: see FAULT_MODES."""
    check_keys(raw, {"fault", "hang", "callbacks"})
    mode = raw["fault"]
    if mode not in FAULT_MODES:
        raise ActionError(f"fault must be one of {sorted(FAULT_MODES)}: {raw}")
    action = {"fault": mode}
    if "hang" in raw:
        if mode != "create_hang":
            raise ActionError(f"hang goes with create_hang only: {raw}")
        action["hang"] = float(raw["hang"])
    if "callbacks" in raw:
        if not isinstance(raw["callbacks"], bool):
            raise ActionError(f"callbacks must be true or false: {raw}")
        action["callbacks"] = raw["callbacks"]
    return action


# What callback_first's "then" may do with the message it created.
THEN_FAULTS = {"create_500", "create_close", "create_hang"}
MESSAGE_STATUSES = ("queued", "sending", "sent", "delivered", "undelivered", "failed",
                    "read", "canceled")


def normalise_callback_first(raw):
    """{"callback_first": [...], "auth_token": str [, "then": action] [, "gate": name]}."""
    check_keys(raw, {"callback_first", "auth_token", "then", "gate"})
    posts = raw["callback_first"]
    if not isinstance(posts, list) or not posts:
        raise ActionError(f"callback_first must be a non-empty array: {raw}")
    statuses = []
    for post in posts:
        if not isinstance(post, dict):
            raise ActionError(f"a callback is a JSON object: {post!r}")
        check_keys(post, {"status", "error_code"})
        if post.get("status") not in MESSAGE_STATUSES:
            raise ActionError(f"a callback's status is one of {', '.join(MESSAGE_STATUSES)}: {post}")
        one = {"status": post["status"]}
        if post.get("error_code") is not None:
            one["error_code"] = int(post["error_code"])
        statuses.append(one)
    if not isinstance(raw.get("auth_token"), str):
        raise ActionError(f"callback_first needs the auth_token to sign with: {raw}")
    then = normalise_action(raw.get("then", {"status": 201}))
    if not ("status" in then and "delay" not in then or then.get("reset")
            or then.get("fault") in THEN_FAULTS):
        raise ActionError(f"then: a status, reset or a fault among {sorted(THEN_FAULTS)}: {raw}")
    action = {"callback_first": statuses, "auth_token": raw["auth_token"], "then": then}
    if "gate" in raw:
        action["gate"] = str(raw["gate"])
    return action


def normalise_action(raw):
    """Validate a scripted action and return it with canonical JSON types."""
    if not isinstance(raw, dict):
        raise ActionError(f"action must be a JSON object: {raw!r}")
    try:
        if "callback_first" in raw:
            return normalise_callback_first(raw)
        if "fault" in raw:
            return normalise_fault(raw)
        if "hang" in raw:
            check_keys(raw, {"hang"})
            return {"hang": float(raw["hang"])}
        if "stall_body" in raw:
            check_keys(raw, {"stall_body"})
            return {"stall_body": float(raw["stall_body"])}
        if "raw" in raw:
            check_keys(raw, {"raw"})
            spec = raw["raw"]
            check_keys(spec, {"status", "headers_b64", "body_b64"})
            headers = [str(h) for h in spec.get("headers_b64", [])]
            body = str(spec.get("body_b64", ""))
            for item in headers + [body]:
                base64.b64decode(item, validate=True)  # refuse what cannot be sent
            return {"raw": {"status": int(spec["status"]), "headers_b64": headers, "body_b64": body}}
        for flag in ("reset", "malformed"):
            if flag in raw:
                check_keys(raw, {flag})
                if not raw[flag]:
                    raise ActionError(f"{flag} must be true: {raw}")
                return {flag: True}
        if "status" not in raw:
            raise ActionError(f"action needs status, hang, reset or malformed: {raw}")
        return normalise_status_action(raw)
    except (TypeError, ValueError) as err:
        raise ActionError(str(err)) from err


def normalise_actions(raw):
    if not isinstance(raw, list):
        raise ActionError(f"actions must be a JSON array: {raw!r}")
    return [normalise_action(item) for item in raw]


def normalise_config(raw):
    if not isinstance(raw, dict):
        raise ActionError('expected {"rates": {...}, "burst": n}')
    rates = raw.get("rates", {})
    if not isinstance(rates, dict):
        raise ActionError("rates must be an object of sender -> per-second rate")
    try:
        rates = {str(sender): float(rate) for sender, rate in rates.items()}
        burst = float(raw.get("burst", 1))
    except (TypeError, ValueError) as err:
        raise ActionError(str(err)) from err
    if burst < 1 or any(rate <= 0 for rate in rates.values()):
        raise ActionError("rates must be > 0 and burst >= 1")
    return rates, burst


def parse_fault_mix(text):
    """'create_500:2,429' -> {"create_500": 2.0, "429": 1.0}; '' or 'all' -> every mode once."""
    if not text or text == "all":
        return {mode: 1.0 for mode in FAULT_MODES}
    mix = {}
    for part in text.split(","):
        mode, _, weight = part.strip().partition(":")
        mix[mode] = float(weight or 1)
    return mix


class RandomFaults:
    """Faults injected at random into creates that no script answers (--fault-rate, /_faults)."""

    def __init__(self, rate=0.0, mix=None, hang=DEFAULT_FAULT_HANG, seed=None):
        self.lock = threading.Lock()
        self.injected = collections.Counter()
        self.configure({"rate": rate, "mix": mix or parse_fault_mix(""), "hang": hang, "seed": seed})

    def configure(self, cfg):
        if not isinstance(cfg, dict):
            raise ActionError('expected {"rate": r, "mix": {mode: weight}, "hang": s, "seed": n}')
        try:
            rate = float(cfg.get("rate", 0))
            mix = cfg.get("mix") or parse_fault_mix("")
            if isinstance(mix, str):
                mix = parse_fault_mix(mix)
            mix = {str(mode): float(w) for mode, w in mix.items()}
            hang = float(cfg.get("hang", DEFAULT_FAULT_HANG))
        except (TypeError, ValueError, AttributeError) as err:
            raise ActionError(str(err)) from err
        if not 0 <= rate <= 1 or hang < 0:
            raise ActionError("rate must be in [0, 1] and hang >= 0")
        unknown = set(mix) - set(FAULT_MODES)
        if unknown or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ActionError(f"mix: modes among {sorted(FAULT_MODES)} with weights >= 0, not all 0")
        with self.lock:
            self.rate, self.mix, self.hang = rate, mix, hang
            self.rng = random.Random(cfg.get("seed"))

    def draw(self):
        """A fault action for the next create, or None (no fault this time)."""
        with self.lock:
            if self.rate <= 0 or self.rng.random() >= self.rate:
                return None
            mode = self.rng.choices(list(self.mix), weights=list(self.mix.values()))[0]
            action = {"fault": mode, "random": True}
            if mode == "create_hang":
                action["hang"] = self.hang
            return action

    def count(self, mode):
        with self.lock:
            self.injected[mode] += 1

    def stats(self):
        with self.lock:
            return {"rate": self.rate, "mix": dict(self.mix), "hang": self.hang,
                    "injected": dict(self.injected)}


# --- shared state ------------------------------------------------------------

class StandInState:
    """Scripts, rate limits and recorded requests, guarded by one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.in_flight = 0
        self.creates = 0  # creates in progress (/_concurrency)
        self._clear()

    def _clear(self):
        self.requests = []
        self.scripts = collections.defaultdict(collections.deque)
        self.default_script = collections.deque()
        self.steady = dict(STEADY_201)
        self.rates = {}
        self.burst = 1.0
        self.buckets = {}
        self.lookups = LookupStore()
        self.gates = {}
        # /_concurrency (Twilio-Concurrent-Requests and the concurrency limit)
        self.others = 0
        self.concurrency_limit = None

    def reset(self):
        with self.lock:
            self._clear()

    def begin(self):
        with self.lock:
            self.in_flight += 1

    def end(self):
        with self.lock:
            self.in_flight -= 1

    def concurrent(self):
        with self.lock:
            return self.in_flight + self.others

    def set_concurrency(self, spec):
        if not isinstance(spec, dict):
            raise ActionError('expected {"others": n, "limit": m | null}')
        others, limit = spec.get("others", 0), spec.get("limit")
        if not isinstance(others, int) or others < 0 or \
                (limit is not None and (not isinstance(limit, int) or limit < 1)):
            raise ActionError("others must be an integer >= 0, limit one >= 1 or null")
        with self.lock:
            self.others, self.concurrency_limit = others, limit

    def gate(self, name):
        """The event a callback_first create waits on (POST /_gate sets it)."""
        with self.lock:
            return self.gates.setdefault(name, threading.Event())

    def open_gate(self, spec):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ActionError('expected {"name": str}')
        self.gate(spec["name"]).set()

    def create_done(self):
        with self.lock:
            self.creates -= 1

    def add_script(self, to, actions):
        with self.lock:
            self.scripts[to].extend(actions)

    def add_default(self, actions):
        with self.lock:
            self.default_script.extend(actions)

    def set_steady(self, action):
        with self.lock:
            self.steady = action

    def set_rates(self, rates, burst):
        with self.lock:
            self.rates, self.burst, self.buckets = rates, burst, {}

    def requests_for(self, to):
        with self.lock:
            return [r for r in self.requests
                    if to is None or (r["form"] is not None and first(r["form"], "To") == to)]

    def admit(self, fields, to, sender, now, fault=None):
        """Choose the action for a Messages request, record it, return the action.

        fault: the random fault drawn for this request, used when no script answers it."""
        with self.lock:
            self.creates += 1
            fields["concurrent"] = self.creates + self.others
            if self.concurrency_limit is not None and fields["concurrent"] > self.concurrency_limit:
                action = {"status": 429, "code": 20429, "message": "Too many concurrent requests"}
            elif not self._take_token(sender, now):
                action = dict(RATE_LIMITED)
            elif self.scripts.get(to):
                action = self.scripts[to].popleft()
            elif self.default_script:
                action = self.default_script.popleft()
            elif fault is not None:
                action = fault
            else:
                action = dict(self.steady)
            self.requests.append({"seq": len(self.requests) + 1, **fields, "action": action})
            return action

    def record(self, fields, action):
        """Record a request answered without admit (a close_early drawn before its body)."""
        with self.lock:
            self.requests.append({"seq": len(self.requests) + 1, **fields, "action": action})

    def _take_token(self, sender, now):
        """Token bucket per sender: `burst` tokens, refilled at the sender's rate."""
        rate = self.rates.get(sender)
        if rate is None:
            return True
        tokens, last = self.buckets.get(sender, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * rate)
        allowed = tokens >= 1
        self.buckets[sender] = (tokens - 1 if allowed else tokens, now)
        return allowed


class LookupStore:
    """Messages the stand-in created, for fetching, deleting and listing them, with its own lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.messages = {}
        # sid -> (whole seconds of date_created, sid): the list's order, kept
        # after a deletion so that a PageToken naming a deleted message still
        # says where its page starts.
        self.order = {}
        self.created_by_key = collections.Counter()
        self.created_by_outbox_id = collections.Counter()
        self.created_total = 0
        self.sids_by_key = collections.defaultdict(list)
        self.sids_by_outbox_id = collections.defaultdict(list)
        self.requests = []
        self.script = collections.deque()
        self.delay = 0.0
        self.in_progress = 0
        self.list_requests = []
        self.list_script = collections.deque()

    def remember(self, resource, key=None, outbox_id=None):
        """Store a message created at "Twilio" and count it under its key and outbox id."""
        with self.lock:
            self.messages[resource["sid"]] = dict(resource)
            when = email.utils.parsedate_to_datetime(resource["date_created"]).timestamp()
            self.order[resource["sid"]] = (int(when), resource["sid"])
            self.created_total += 1
            if key:
                self.created_by_key[key] += 1
                self.sids_by_key[key].append(resource["sid"])
            if outbox_id:
                self.created_by_outbox_id[outbox_id] += 1
                self.sids_by_outbox_id[outbox_id].append(resource["sid"])

    def created(self):
        """GET /_created: how many messages were created, per idempotency key and outbox id."""
        with self.lock:
            return {"total": self.created_total,
                    "by_key": dict(self.created_by_key),
                    "by_outbox_id": dict(self.created_by_outbox_id),
                    "sids_by_key": {k: list(v) for k, v in self.sids_by_key.items()},
                    "sids_by_outbox_id": {k: list(v) for k, v in self.sids_by_outbox_id.items()}}

    def listed(self, account_sid, to, sender):
        """The account's messages passing the To/From filters, newest first (date_created, sid)."""
        with self.lock:
            found = [dict(m) for m in self.messages.values()
                     if m["account_sid"] == account_sid
                     and (to is None or m["to"] == to)
                     and (sender is None or m["from"] == sender)]
            order = dict(self.order)
        found.sort(key=lambda m: order[m["sid"]], reverse=True)
        return found, order

    def add_list_script(self, spec):
        if not isinstance(spec, dict) or not isinstance(spec.get("actions"), list):
            raise ActionError('expected {"actions": [...]}')
        actions = []
        for raw in spec["actions"]:
            if not isinstance(raw, dict) or int(raw.get("status", 0)) < 400:
                raise ActionError(f"a list action is an error status >= 400: {raw}")
            actions.append(normalise_status_action(raw))
        with self.lock:
            self.list_script.extend(actions)

    def next_list_action(self):
        with self.lock:
            return self.list_script.popleft() if self.list_script else None

    def record_list(self, entry):
        with self.lock:
            self.list_requests.append(entry)

    def recorded_lists(self):
        with self.lock:
            return list(self.list_requests)

    def fetch(self, account_sid, sid):
        with self.lock:
            resource = self.messages.get(sid)
            if resource is None or resource["account_sid"] != account_sid:
                return None
            return dict(resource)

    def delete(self, account_sid, sid):
        with self.lock:
            resource = self.messages.get(sid)
            if resource is None or resource["account_sid"] != account_sid:
                return None
            return self.messages.pop(sid)

    def set_status(self, spec):
        if not isinstance(spec, dict) or not isinstance(spec.get("sid"), str) \
                or not isinstance(spec.get("status"), str):
            raise ActionError('expected {"sid": "SM...", "status": "..."}')
        code = spec.get("error_code")
        if code is not None and not isinstance(code, int):
            raise ActionError("error_code must be an integer or null")
        date_sent = rfc2822_of(spec["date_sent"]) if spec.get("date_sent") is not None else None
        with self.lock:
            resource = self.messages.get(spec["sid"])
            if resource is None:
                raise ActionError(f"no message {spec['sid']}")
            resource["status"] = spec["status"]
            resource["error_code"] = code
            resource["error_message"] = spec.get("error_message")
            resource["date_updated"] = rfc2822_now()
            if "date_sent" in spec:
                resource["date_sent"] = date_sent

    def add_script(self, spec):
        if not isinstance(spec, dict) or not ({"actions", "delay"} & set(spec)) \
                or not isinstance(spec.get("actions", []), list):
            raise ActionError('expected {"actions": [...]} and/or {"delay": s}')
        try:
            delay = float(spec.get("delay", self.delay))
        except (TypeError, ValueError) as err:
            raise ActionError(str(err)) from err
        actions = []
        for raw in spec.get("actions", []):
            if not isinstance(raw, dict) or int(raw.get("status", 0)) < 400:
                raise ActionError(f"a lookup action is an error status >= 400: {raw}")
            actions.append(normalise_status_action(raw))
        with self.lock:
            self.script.extend(actions)
            self.delay = delay

    def begin(self):
        """A fetch or deletion arrives: how many are in progress, itself included, and the delay."""
        with self.lock:
            self.in_progress += 1
            return self.in_progress, self.delay

    def end(self):
        with self.lock:
            self.in_progress -= 1

    def next_action(self):
        with self.lock:
            return self.script.popleft() if self.script else None

    def record(self, t, method, sid, account_sid, status, user, concurrent):
        with self.lock:
            self.requests.append({"t": t, "method": method, "sid": sid,
                                  "account_sid": account_sid, "status": status,
                                  "auth_user": user, "concurrent": concurrent})

    def recorded(self):
        with self.lock:
            return list(self.requests)


# --- request parsing and response bodies -------------------------------------

def first(form, key):
    values = form.get(key)
    return values[0] if values else None


def sender_of(form):
    """Twilio sends through the Messaging Service when one is given."""
    return first(form, "MessagingServiceSid") or first(form, "From")


def parse_query(query):
    """Decode a query string, keeping a literal '+' (as in phone numbers)."""
    pairs = (part.partition("=") for part in query.split("&") if part)
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, _, v in pairs}


def parse_basic_auth(header):
    """Return (user, password) from a Basic Authorization header, else (None, None)."""
    if not header or not header.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    return user, (password if sep else None)


def rfc2822_now():
    return email.utils.format_datetime(datetime.now(timezone.utc))


def message_resource(account_sid, form, twilio_status):
    """A Message resource shaped like api.v2010.account.message."""
    body = first(form, "Body") or ""
    media = form.get("MediaUrl", [])
    sender = first(form, "From")
    service = first(form, "MessagingServiceSid")
    sid = ("MM" if media else "SM") + uuid.uuid4().hex
    uri_base = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}"
    now = rfc2822_now()
    return {
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": body,
        "date_created": now,
        "date_sent": None,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": sender,
        "messaging_service_sid": service,
        "num_media": str(len(media)),
        "num_segments": str(max(1, math.ceil(len(body) / SEGMENT_CHARS))),
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": twilio_status or ("accepted" if service and not sender else "queued"),
        "subresource_uris": {"media": f"{uri_base}/Media.json"},
        "to": first(form, "To"),
        "uri": f"{uri_base}.json",
    }


def rfc2822_of(value):
    """An RFC 2822 date (as Twilio writes them) from an ISO 8601 or RFC 2822 string."""
    if not isinstance(value, str):
        raise ActionError(f"a date is an ISO 8601 or RFC 2822 string: {value!r}")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError) as err:
            raise ActionError(f"not a date: {value!r}") from err
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return email.utils.format_datetime(when.astimezone(timezone.utc))


def outbox_id_of(callback_url):
    """The outbox message id the dispatcher puts in the StatusCallback URL, if any."""
    if not callback_url:
        return None
    query = urllib.parse.urlsplit(callback_url).query
    values = urllib.parse.parse_qs(query).get("outbox_id")
    return values[0] if values else None


class ListError(ValueError):
    """A list request parameter Twilio would refuse with a 400."""


LIST_FILTERS = ("To", "From", "DateSent", "DateSent<", "DateSent>")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def list_params(query):
    """Validate a Messages list query: (filters, page size, page, page token)."""
    filters = {name: query[name] for name in LIST_FILTERS if name in query}
    for name in ("DateSent", "DateSent<", "DateSent>"):
        if name in filters:
            try:
                if not DATE_ONLY.match(filters[name]):
                    raise ValueError
                filters[name] = datetime.strptime(filters[name], "%Y-%m-%d").date().isoformat()
            except ValueError:
                raise ListError(f"Invalid {name}: '{filters[name]}' is not a date of the form YYYY-MM-DD") from None
    size = query.get("PageSize", str(DEFAULT_PAGE_SIZE))
    if not re.match(r"^[0-9]+$", size) or not 1 <= int(size) <= MAX_PAGE_SIZE:
        raise ListError(f"Invalid PageSize: '{size}' (an integer from 1 to {MAX_PAGE_SIZE})")
    page = query.get("Page", "0")
    if not re.match(r"^[0-9]+$", page):
        raise ListError(f"Invalid Page: '{page}'")
    token = query.get("PageToken")
    if int(page) > 0 and not token:
        raise ListError("Paged requests must include a PageToken")
    if token is not None and not re.match(r"^P[AB](SM|MM)[0-9a-f]{32}$", token):
        raise ListError(f"Invalid PageToken: '{token}'")
    return filters, int(size), int(page), token


def date_sent_matches(message, filters):
    """DateSent filters compare date_sent's UTC date; a message not sent yet never matches one."""
    wanted = [(name, filters[name]) for name in ("DateSent", "DateSent<", "DateSent>") if name in filters]
    if not wanted:
        return True
    if message["date_sent"] is None:
        return False
    sent = email.utils.parsedate_to_datetime(message["date_sent"]).astimezone(timezone.utc).date().isoformat()
    return all({"DateSent": sent == day, "DateSent<": sent <= day, "DateSent>": sent >= day}[name]
               for name, day in wanted)


def page_uri(account_sid, filters, size, page, token):
    params = [(name, filters[name]) for name in LIST_FILTERS if name in filters]
    params += [("PageSize", str(size)), ("Page", str(page))]
    if token:
        params.append(("PageToken", token))
    return f"/{API_VERSION}/Accounts/{account_sid}/Messages.json?" + urllib.parse.urlencode(params)


def list_page(account_sid, messages, order, filters, size, page, token):
    """One page of the list, newest first; PageToken PA<sid>: the page after that message,
    PB<sid>: the page before it (a token holds the place, not an offset, as new messages
    arrive at the top)."""
    messages = [m for m in messages if date_sent_matches(m, filters)]
    keys = [order[m["sid"]] for m in messages]
    if token is None:
        start = 0
    else:
        mark = order.get(token[2:])
        if mark is None:
            raise ListError(f"Invalid PageToken: '{token}'")
        if token.startswith("PA"):
            start = next((i for i, k in enumerate(keys) if k < mark), len(keys))
        else:
            before = next((i for i, k in enumerate(keys) if k <= mark), len(keys))
            start = max(0, before - size)
    items = messages[start:start + size]
    more = start + size < len(messages)
    return {
        "end": page * size + max(len(items) - 1, 0),
        "first_page_uri": page_uri(account_sid, filters, size, 0, None),
        "messages": items,
        "next_page_uri": page_uri(account_sid, filters, size, page + 1, "PA" + items[-1]["sid"])
        if items and more else None,
        "page": page,
        "page_size": size,
        "previous_page_uri": page_uri(account_sid, filters, size, page - 1, "PB" + items[0]["sid"])
        if items and start > 0 else None,
        "start": page * size,
        "uri": page_uri(account_sid, filters, size, page, token),
    }


def call_resource(account_sid, form):
    """A Call resource shaped like api.v2010.account.call, just created (queued)."""
    sid = "CA" + uuid.uuid4().hex
    uri_base = f"/{API_VERSION}/Accounts/{account_sid}/Calls/{sid}"
    now = rfc2822_now()
    to, sender = first(form, "To"), first(form, "From")
    return {
        "account_sid": account_sid, "annotation": None, "answered_by": None,
        "api_version": API_VERSION, "caller_name": None, "date_created": now,
        "date_updated": now, "direction": "outbound-api", "duration": None,
        "end_time": None, "forwarded_from": None, "from": sender, "from_formatted": sender,
        "group_sid": None, "parent_call_sid": None, "phone_number_sid": "PN" + uuid.uuid4().hex,
        "price": None, "price_unit": "USD", "queue_time": "0", "sid": sid, "start_time": None,
        "status": "queued", "subresource_uris": {"notifications": f"{uri_base}/Notifications.json",
                                                 "recordings": f"{uri_base}/Recordings.json"},
        "to": to, "to_formatted": to, "trunk_sid": None, "uri": f"{uri_base}.json",
    }


def twilio_error(status, code, message):
    return {
        "code": code,
        "message": message or DEFAULT_MESSAGES.get(code, f"HTTP {status} error"),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


# --- HTTP handler ------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self):
        return "TwilioStandIn/1.0"

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)

    @property
    def state(self):
        return self.server.state

    def _dispatch(self):
        self.arrival = time.time()
        self.started = time.monotonic()
        self.state.begin()
        try:
            path, _, query = self.path.partition("?")
            match = MESSAGES_PATH.match(path)
            fault = None
            if self.command == "POST" and match:
                # Drawn before the body is read, so that close_early can
                # really close before reading it.
                fault = self.server.faults.draw()
                if fault is not None and fault["fault"] == "close_early":
                    self._close_early(match.group(1), path, fault)
                    return
            body = self._read_body()
            route = CONTROL_ROUTES.get((self.command, path))
            if route:
                route(self, parse_query(query), body)
            elif self.command == "POST" and match:
                self._create_message(match.group(1), path, body, fault)
            elif self.command == "GET" and match:
                self._list_messages(match.group(1), parse_query(query))
            elif self.command == "POST" and CALLS_PATH.match(path):
                self._create_message(CALLS_PATH.match(path).group(1), path, body, call=True)
            elif self.command in ("GET", "DELETE") and MESSAGE_PATH.match(path):
                self._message_instance(*MESSAGE_PATH.match(path).groups())
            else:
                self._send_error(404, 20404, f"The requested resource {path} was not found")
        except ConnectionError:
            self.close_connection = True
        finally:
            self.state.end()

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self):
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # skip trailers up to the blank line
        return b"".join(chunks)

    # responses

    def _send_bytes(self, status, payload, extra_headers=None, stall=None):
        concurrent = self.state.concurrent()
        self._create_done()
        self.send_response(status)
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(payload)),
            "Twilio-Request-Id": "RQ" + uuid.uuid4().hex,
            "Twilio-Concurrent-Requests": str(concurrent),
            "Twilio-Request-Duration": f"{time.monotonic() - self.started:.3f}",
            **(extra_headers or {}),
        }
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if stall is None:
            self.wfile.write(payload)
            return
        # half the body, then nothing: the client's transfer stalls mid-body
        self.wfile.write(payload[: len(payload) // 2])
        self.wfile.flush()
        time.sleep(stall)
        self.close_connection = True

    def _send_json(self, status, obj, extra_headers=None, stall=None):
        self._send_bytes(status, json.dumps(obj).encode("utf-8"), extra_headers, stall)

    def _send_error(self, status, code, message, extra_headers=None):
        self._send_json(status, twilio_error(status, code, message), extra_headers)

    def _reset_connection(self):
        """Drop the connection with an RST and no response."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.rfile.close()
        self.connection.close()

    # Twilio endpoint

    def _request_fields(self, account_sid, path, form):
        user, password = parse_basic_auth(self.headers.get("Authorization"))
        return {
            "t": self.arrival,
            "method": self.command,
            "path": path,
            "account_sid": account_sid,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "form": form,
            "auth_user": user,
            "auth_password": password,
        }

    def _create_message(self, account_sid, path, body, fault=None, call=False):
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        fields = self._request_fields(account_sid, path, form)
        # the answers of callback_first's callbacks, shown with the request
        fields["callbacks"] = []
        action = self.state.admit(fields, first(form, "To"), sender_of(form), time.monotonic(), fault)
        self.create_open = True
        try:
            self._perform(action, account_sid, form, call, fields["callbacks"])
        finally:
            self._create_done()

    def _create_done(self):
        """A create stops counting (/_concurrency) once answered, before the client can see it."""
        if getattr(self, "create_open", False):
            self.create_open = False
            self.state.create_done()

    def _close_early(self, account_sid, path, fault):
        """A random close_early: recorded (form unknown: never read), then RST."""
        self.state.record(self._request_fields(account_sid, path, None), fault)
        self.server.faults.count("close_early")
        self._reset_connection()

    def _remember_created(self, account_sid, form, twilio_status):
        """Create the message "at Twilio": stored for fetch and list, counted.

        Its stored date_sent is its date_created (the stand-in sends at once;
        POST /_message_status can make it null), while the create answer, as
        Twilio's, has none yet."""
        resource = message_resource(account_sid, form, twilio_status)
        outbox_id = outbox_id_of(first(form, "StatusCallback"))
        self.state.lookups.remember(dict(resource, date_sent=resource["date_created"]),
                                    self.headers.get(self.server.idempotency_header), outbox_id)
        return resource

    def _perform_fault(self, action, account_sid, form):
        mode = action["fault"]
        self.server.faults.count(mode)
        if mode == "close_early":
            self._reset_connection()
            return
        if mode in ("429", "503"):
            status = int(mode)
            self._send_error(status, default_code(status), None)
            return
        resource = self._remember_created(account_sid, form, None)
        if action.get("callbacks", True):
            self.server.callbacks.after_create(account_sid, form, resource)
        if mode == "create_500":
            self._send_error(500, 20500, None)
            return
        if mode == "create_hang":
            time.sleep(action.get("hang", DEFAULT_FAULT_HANG))
        # create_hang, create_close: no answer at all, the connection closes.
        self.close_connection = True

    def _send_raw(self, spec):
        """Status line, the given header lines byte for byte, Content-Length, body."""
        body = base64.b64decode(spec["body_b64"])
        out = [f"HTTP/1.1 {spec['status']} Whatever".encode("ascii")]
        out += [base64.b64decode(h) for h in spec["headers_b64"]]
        out.append(f"Content-Length: {len(body)}".encode("ascii"))
        self.wfile.write(b"\r\n".join(out) + b"\r\n\r\n" + body)
        self.wfile.flush()

    def _callback_first(self, action, account_sid, form, answers):
        """Post the message's status callbacks, then answer the create (see callback_first)."""
        resource = self._remember_created(account_sid, form, None)
        url = first(form, "StatusCallback")
        posts = [status_callback_params(account_sid, resource, post["status"], post.get("error_code"))
                 for post in action["callback_first"]] if url else []

        def post_all():
            for params in posts:
                try:
                    # answered only once the test lets the database go on
                    status, body = post_webhook(url, params, action["auth_token"], timeout=300)
                except (OSError, ValueError, http.client.HTTPException) as err:
                    status, body = "error", str(err)
                answers.append({"status": dict(params)["MessageStatus"], "http": status, "body": body})

        if not url:
            answers.append({"status": None, "http": "error", "body": "no StatusCallback"})
        if "gate" in action:
            threading.Thread(target=post_all, daemon=True).start()
            if not self.state.gate(action["gate"]).wait(120):
                answers.append({"status": None, "http": "error", "body": "gate never opened"})
        else:
            post_all()
        then = action["then"]
        mode = then.get("fault")
        if then.get("reset"):
            self._reset_connection()
        elif mode == "create_hang":
            time.sleep(then.get("hang", DEFAULT_FAULT_HANG))
            self.close_connection = True
        elif mode == "create_close":
            self.close_connection = True
        elif mode == "create_500":
            self._send_error(500, 20500, None)
        elif then["status"] == 201:
            if "twilio_status" in then:
                resource["status"] = then["twilio_status"]
            self._send_json(201, resource)
        else:
            retry = {"Retry-After": then["retry_after"]} if "retry_after" in then else None
            self._send_error(then["status"], then["code"], then.get("message"), retry)

    def _perform(self, action, account_sid, form, call=False, answers=None):
        if "callback_first" in action:
            self._callback_first(action, account_sid, form, answers if answers is not None else [])
            return
        if "fault" in action:
            self._perform_fault(action, account_sid, form)
            return
        if action.get("reset"):
            self._reset_connection()
            return
        if "raw" in action:
            self._send_raw(action["raw"])
            return
        if "stall_body" in action:
            if call:
                resource = call_resource(account_sid, form)
            else:
                resource = self._remember_created(account_sid, form, None)
            self._send_json(201, resource, stall=action["stall_body"])
            return
        time.sleep(action.get("hang", action.get("delay", 0)))
        if action.get("malformed"):
            self._send_bytes(201, MALFORMED_BODY)
        elif call and ("hang" in action or action["status"] == 201):
            resource = call_resource(account_sid, form)
            self._send_json(201, resource)
            self.server.callbacks.after_call(account_sid, form, resource)
        elif "hang" in action or action["status"] == 201:
            resource = self._remember_created(account_sid, form, action.get("twilio_status"))
            self._send_json(201, resource)
            self.server.callbacks.after_create(account_sid, form, resource)
        else:
            status = action["status"]
            retry = {"Retry-After": action["retry_after"]} if "retry_after" in action else None
            code = action.get("code", default_code(status))
            self._send_error(status, code, action.get("message"), retry)

    # fetch and delete of one message (LookupStore)

    def _message_instance(self, account_sid, sid):
        """GET or DELETE .../Messages/{sid}.json, answered after the configured delay."""
        store = self.state.lookups
        concurrent, delay = store.begin()
        try:
            time.sleep(delay)
            self._answer_instance(store, account_sid, sid, concurrent)
        finally:
            store.end()

    def _answer_instance(self, store, account_sid, sid, concurrent):
        """A scripted answer, else the store's."""
        user, _ = parse_basic_auth(self.headers.get("Authorization"))
        action = store.next_action()
        if action is not None:
            store.record(self.arrival, self.command, sid, account_sid, action["status"], user, concurrent)
            retry = {"Retry-After": action["retry_after"]} if "retry_after" in action else None
            self._send_error(action["status"], action["code"], action.get("message"), retry)
            return
        if self.command == "GET":
            resource = store.fetch(account_sid, sid)
        else:
            resource = store.delete(account_sid, sid)
        status = 404 if resource is None else (200 if self.command == "GET" else 204)
        store.record(self.arrival, self.command, sid, account_sid, status, user, concurrent)
        if resource is None:
            self._send_error(404, 20404, f"The requested resource /{API_VERSION}/Accounts/"
                             f"{account_sid}/Messages/{sid}.json was not found")
        elif status == 204:
            self._send_bytes(204, b"")
        else:
            self._send_json(200, resource)

    # the list resource (GET .../Messages.json)

    def _list_messages(self, account_sid, query):
        store = self.state.lookups
        user, _ = parse_basic_auth(self.headers.get("Authorization"))
        entry = {"t": self.arrival, "account_sid": account_sid, "query": query, "auth_user": user}
        action = store.next_list_action()
        if action is not None:
            store.record_list({**entry, "status": action["status"], "count": 0})
            retry = {"Retry-After": action["retry_after"]} if "retry_after" in action else None
            self._send_error(action["status"], action["code"], action.get("message"), retry)
            return
        try:
            filters, size, page, token = list_params(query)
            messages, order = store.listed(account_sid, filters.get("To"), filters.get("From"))
            answer = list_page(account_sid, messages, order, filters, size, page, token)
        except ListError as err:
            store.record_list({**entry, "status": 400, "count": 0})
            self._send_error(400, 20001, str(err))
            return
        store.record_list({**entry, "status": 200, "count": len(answer["messages"])})
        self._send_json(200, answer)

    def _lists(self, query, body):
        self._send_json(200, self.state.lookups.recorded_lists())

    def _list_script(self, query, body):
        self._control(body, self.state.lookups.add_list_script)

    def _created(self, query, body):
        self._send_json(200, self.state.lookups.created())

    def _faults_set(self, query, body):
        self._control(body, self.server.faults.configure)

    def _faults_get(self, query, body):
        self._send_json(200, self.server.faults.stats())

    def _messages_create(self, query, body):
        """POST /_messages: a message created "at Twilio" without a request of ours."""
        try:
            sid = self._create_directly(json.loads(body or b"{}"))
        except (ValueError, ActionError) as err:
            self._send_json(400, {"ok": False, "error": str(err)})
            return
        self._send_json(200, {"ok": True, "sid": sid})

    def _create_directly(self, spec):
        if not isinstance(spec, dict) or not isinstance(spec.get("account_sid"), str) \
                or not isinstance(spec.get("to"), str):
            raise ActionError('expected {"account_sid": "AC...", "to": "+1...", ...}')
        check_keys(spec, {"account_sid", "to", "from", "messaging_service_sid", "body", "status",
                          "date_created", "date_sent", "idempotency_key", "outbox_id"})
        form = {"To": [spec["to"]], "Body": [str(spec.get("body", ""))]}
        for key, name in (("from", "From"), ("messaging_service_sid", "MessagingServiceSid")):
            if spec.get(key) is not None:
                form[name] = [str(spec[key])]
        resource = message_resource(spec["account_sid"], form, None)
        if "date_created" in spec:
            resource["date_created"] = resource["date_updated"] = rfc2822_of(spec["date_created"])
        resource["status"] = str(spec.get("status", "sent"))
        sent = spec.get("date_sent", resource["date_created"])
        resource["date_sent"] = None if sent is None else rfc2822_of(sent)
        outbox_id = spec.get("outbox_id")
        self.state.lookups.remember(resource, spec.get("idempotency_key"),
                                    None if outbox_id is None else str(outbox_id))
        return resource["sid"]

    def _lookups(self, query, body):
        self._send_json(200, self.state.lookups.recorded())

    def _message_status(self, query, body):
        self._control(body, self.state.lookups.set_status)

    def _lookup_script(self, query, body):
        self._control(body, self.state.lookups.add_script)

    # control endpoints

    def _control(self, body, apply):
        """Decode a JSON control body, apply it, answer {"ok": true} or a 400."""
        try:
            apply(json.loads(body or b"{}"))
        except (ValueError, ActionError) as err:
            self._send_json(400, {"ok": False, "error": str(err)})
            return
        self._send_json(200, {"ok": True})

    def _health(self, query, body):
        self._send_json(200, {"ok": True})

    def _requests(self, query, body):
        self._send_json(200, self.state.requests_for(query.get("to")))

    def _script(self, query, body):
        self._control(body, self._apply_script)

    def _config(self, query, body):
        self._control(body, lambda cfg: self.state.set_rates(*normalise_config(cfg)))

    def _concurrency(self, query, body):
        self._control(body, self.state.set_concurrency)

    def _reset(self, query, body):
        self.state.reset()
        self.server.faults.configure({"rate": 0})
        self._send_json(200, {"ok": True})

    def _apply_script(self, spec):
        """Validate every part of a /_script body before applying any of it."""
        if not isinstance(spec, dict) or not ({"actions", "default", "steady"} & set(spec)):
            raise ActionError('expected {"to", "actions"}, {"default"} or {"steady"}')
        if "actions" in spec and not isinstance(spec.get("to"), str):
            raise ActionError('"actions" needs a string "to"')
        per_to = normalise_actions(spec["actions"]) if "actions" in spec else None
        default = normalise_actions(spec["default"]) if "default" in spec else None
        steady = normalise_action(spec["steady"]) if "steady" in spec else None
        if per_to is not None:
            self.state.add_script(spec["to"], per_to)
        if default is not None:
            self.state.add_default(default)
        if steady is not None:
            self.state.set_steady(steady)


    def _gate(self, query, body):
        self._control(body, self.state.open_gate)

    def _callbacks(self, query, body):
        self._control(body, self.server.callbacks.configure)

    def _callback_stats(self, query, body):
        self._send_json(200, self.server.callbacks.stats())

    def _inbound(self, query, body):
        try:
            answer = post_inbound(json.loads(body or b"{}"))
        except (ValueError, KeyError, TypeError, OSError) as err:
            self._send_json(400, {"ok": False, "error": str(err)})
            return
        self._send_json(200, answer)


CONTROL_ROUTES = {
    ("GET", "/_health"): Handler._health,
    ("GET", "/_requests"): Handler._requests,
    ("POST", "/_script"): Handler._script,
    ("POST", "/_config"): Handler._config,
    ("POST", "/_reset"): Handler._reset,
    ("POST", "/_concurrency"): Handler._concurrency,
    ("GET", "/_lookups"): Handler._lookups,
    ("POST", "/_message_status"): Handler._message_status,
    ("POST", "/_lookup_script"): Handler._lookup_script,
    ("POST", "/_gate"): Handler._gate,
    ("POST", "/_callbacks"): Handler._callbacks,
    ("GET", "/_callbacks"): Handler._callback_stats,
    ("POST", "/_inbound"): Handler._inbound,
    ("POST", "/_messages"): Handler._messages_create,
    ("POST", "/_list_script"): Handler._list_script,
    ("GET", "/_lists"): Handler._lists,
    ("GET", "/_created"): Handler._created,
    ("POST", "/_faults"): Handler._faults_set,
    ("GET", "/_faults"): Handler._faults_get,
}


# --- status callbacks and inbound messages (Twilio's webhooks) ---------------

def twilio_signature(auth_token, url, params):
    """X-Twilio-Signature: base64 HMAC-SHA1 over the URL and each name + value, names sorted."""
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def post_webhook(url, params, auth_token, conn_cache=None, timeout=10):
    """POST a signed form to url (http on loopback only); returns (status, body)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"webhooks go to http on loopback only, not {url}")
    body = urllib.parse.urlencode(params)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": twilio_signature(auth_token, url, params),
        "I-Twilio-Idempotency-Token": uuid.uuid4().hex,
    }
    target = parts.path + ("?" + parts.query if parts.query else "")
    key = (parts.hostname, parts.port)
    for attempt in (1, 2):
        conn = (conn_cache or {}).get(key) or http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.request("POST", target, body=body, headers=headers)
            res = conn.getresponse()
            answer = res.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            conn.close()
            if conn_cache is not None:
                conn_cache.pop(key, None)
            if attempt == 2:
                raise
            continue
        if conn_cache is not None:
            conn_cache[key] = conn
        else:
            conn.close()
        return res.status, answer


def post_inbound(spec):
    """An incoming message, as Twilio posts it to a number's messaging webhook."""
    params = [
        ("AccountSid", spec["account_sid"]), ("ApiVersion", API_VERSION), ("Body", spec["body"]),
        ("From", spec["from"]), ("MessageSid", "SM" + uuid.uuid4().hex), ("NumMedia", "0"),
        ("NumSegments", "1"), ("SmsMessageSid", "SM" + uuid.uuid4().hex), ("SmsStatus", "received"),
        ("To", spec["to"]),
    ]
    status, body = post_webhook(spec["url"], params, spec["auth_token"])
    return {"status": status, "body": body}


def status_callback_params(account_sid, resource, status, error_code=None):
    """The fields of a message's status callback, as Twilio posts them."""
    params = [("AccountSid", account_sid), ("ApiVersion", API_VERSION),
              ("From", resource["from"] or ""), ("MessageSid", resource["sid"]),
              ("SmsSid", resource["sid"]), ("To", resource["to"])]
    if resource["messaging_service_sid"]:
        params.append(("MessagingServiceSid", resource["messaging_service_sid"]))
    params += [("MessageStatus", status), ("SmsStatus", status)]
    if error_code is not None:
        params.append(("ErrorCode", str(error_code)))
    return params


class CallbackSender:
    """Twilio's status callbacks for the messages the stand-in created (POST /_callbacks)."""

    THREADS = 4

    def __init__(self):
        self.lock = threading.Lock()
        self.config = None
        self.messages = 0
        self.posted = 0
        self.answers = collections.Counter()
        self.jobs = queue.Queue()
        for _ in range(self.THREADS):
            threading.Thread(target=self._work, daemon=True).start()

    def configure(self, cfg):
        if not isinstance(cfg, dict) or not isinstance(cfg.get("auth_token"), str):
            raise ActionError('expected {"auth_token": str, "outcomes": {...}, ...}')
        outcomes = cfg.get("outcomes", {})
        for to, outcome in outcomes.items():
            if outcome.get("status") not in ("delivered", "undelivered", "failed", "read"):
                raise ActionError(f"outcome for {to}: status must be delivered, undelivered, failed or read")
        call_outcomes = cfg.get("call_outcomes", {})
        for to, outcome in call_outcomes.items():
            if outcome not in CALL_FINAL:
                raise ActionError(f"call outcome for {to}: must be one of {', '.join(CALL_FINAL)}")
        with self.lock:
            self.config = {
                "auth_token": cfg["auth_token"],
                "outcomes": outcomes,
                "call_outcomes": call_outcomes,
                "duplicate_every": int(cfg.get("duplicate_every", 0)),
                "reverse_every": int(cfg.get("reverse_every", 0)),
            }

    def stats(self):
        with self.lock:
            return {"messages": self.messages, "queued": self.jobs.qsize(), "posted": self.posted,
                    "answers": {str(k): v for k, v in self.answers.items()}}

    def after_create(self, account_sid, form, resource):
        """Queue the callbacks of a message just created (its 201 already sent)."""
        url = first(form, "StatusCallback")
        with self.lock:
            cfg = self.config
            if cfg is None or not url:
                return
            self.messages += 1
            k = self.messages
        outcome = cfg["outcomes"].get(resource["to"], {"status": "delivered"})
        sent = status_callback_params(account_sid, resource, "sent")
        final = status_callback_params(account_sid, resource, outcome["status"], outcome.get("error_code"))
        posts = [sent, final]
        if cfg["reverse_every"] and k % cfg["reverse_every"] == 0:
            posts.reverse()
        if cfg["duplicate_every"] and k % cfg["duplicate_every"] == 0:
            posts = [p for p in posts for _ in (1, 2)]
        for params in posts:
            self.jobs.put((url, params, cfg["auth_token"]))

    def after_call(self, account_sid, form, resource):
        """Queue a call's status callback (StatusCallbackEvent completed: its final status)."""
        url = first(form, "StatusCallback")
        with self.lock:
            cfg = self.config
            if cfg is None or not url:
                return
            self.messages += 1
        status = cfg["call_outcomes"].get(resource["to"], "completed")
        params = [("AccountSid", account_sid), ("ApiVersion", API_VERSION),
                  ("CallSid", resource["sid"]), ("CallStatus", status),
                  ("CallbackSource", "call-progress-events"), ("Direction", "outbound-api"),
                  ("From", resource["from"] or ""), ("SequenceNumber", "0"),
                  ("Timestamp", rfc2822_now()), ("To", resource["to"])]
        if status == "completed":
            params.append(("CallDuration", "7"))
        self.jobs.put((url, params, cfg["auth_token"]))

    def _work(self):
        conns = {}
        while True:
            url, params, token = self.jobs.get()
            try:
                status, _ = post_webhook(url, params, token, conns)
            except (OSError, ValueError, http.client.HTTPException):
                status = "error"
            with self.lock:
                self.posted += 1
                self.answers[status] += 1


# --- server lifecycle --------------------------------------------------------

class StandInServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog of 5 drops SYNs from a client opening many
    # connections at once, and each retry costs it a second.
    request_queue_size = 512
    block_on_close = False

    def handle_error(self, request, client_address):
        """A client that went away (a killed dispatcher's idle keep-alive
        connections, say) is no error of the stand-in's: no traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def __init__(self, port, quiet, faults=None, idempotency_header="Idempotency-Key"):
        self.state = StandInState()
        self.callbacks = CallbackSender()
        self.faults = faults or RandomFaults()
        self.idempotency_header = idempotency_header
        self.quiet = quiet
        super().__init__(("127.0.0.1", port), Handler)


def write_port_file(path, port):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Local Twilio Messages API stand-in")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0 = any free port)")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--quiet", action="store_true", help="no per-request logging")
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="share of creates (no script answering them) that meet a random fault")
    parser.add_argument("--fault-mix", default="all",
                        help="modes and weights, e.g. create_500:2,create_close,429 (default: all, equally)")
    parser.add_argument("--fault-hang", type=float, default=DEFAULT_FAULT_HANG,
                        help="seconds a create_hang fault holds the connection")
    parser.add_argument("--fault-seed", type=int, help="seed of the fault draws (repeatable runs)")
    parser.add_argument("--idempotency-header", default="Idempotency-Key",
                        help="request header counted as the idempotency key (GET /_created)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        faults = RandomFaults(args.fault_rate, parse_fault_mix(args.fault_mix), args.fault_hang, args.fault_seed)
    except (ActionError, ValueError) as err:
        print(f"twilio stand-in: {err}", file=sys.stderr)
        return 2
    server = StandInServer(args.port, args.quiet, faults, args.idempotency_header)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    if args.port_file:
        write_port_file(args.port_file, port)
    if not args.quiet:
        print(f"twilio stand-in listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
