#!/usr/bin/env python3
"""A minimal Yosegi party written from docs/PROTOCOL.md and proto/yosegi/v1/*.proto only.

It checks the documented test vectors, then long-polls the coordinator and does its work:
statistics (FeatureSums), training (download + verify the base, numpy MLP, signed safetensors
update) and evaluation (MetricStats), until its evaluation of a model merged from its own training
round has been accepted. Binary tasks, a plain network, plain fedavg rounds only; other work is
declined with a reason, as PROTOCOL.md "One task, step by step" §5 allows.

Data split (a choice this party makes; PROTOCOL.md §1 says the coordinator cannot see it, only that
the sums must cover exactly the rows trained on): rows shuffled by the spec's `[training] seed`,
the first 80 % are the training rows (summed, trained on, their count signed as sample_count) and
the last 20 % the holdout (local metrics and evaluations). No validation rows and no membership
audit (PROTOCOL.md §3 has every party run one; `membership_audit_json` is left empty, "none").

Needs the stubs from `python -m grpc_tools.protoc -I proto --python_out=OUT ...` on PYTHONPATH.
"""
import argparse, csv, hashlib, json, os, re, struct, sys, time, tomllib
from pathlib import Path

import grpc
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding, PublicFormat, load_pem_private_key, load_pem_public_key)
from safetensors.numpy import load as st_load, save as st_save
from yosegi.v1 import common_pb2 as cpb, party_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
u64, i64 = (lambda n: struct.pack("<Q", n)), (lambda n: struct.pack("<q", n))
sha = lambda *parts: hashlib.sha256(b"".join(parts)).digest()
lp = lambda s: u64(len(s)) + s  # length-prefixed bytes
CHUNK = 1 << 20  # PROTOCOL.md §3: chunks of at most 1 MiB
PROTOCOL, OLDEST_COORDINATOR = 2, 1  # COMPATIBILITY.md: what this party speaks and accepts


def log(*a):
    print("python-party:", *a, file=sys.stderr, flush=True)


# --- Signed formats (PROTOCOL.md "Call authentication", "Signed updates", "The spec id") -------

def call_digest(method, caller, ts_ms, nonce, body):
    return sha(b"yosegi.v1.call.v2\0", lp(method.encode()), lp(caller.encode()), i64(ts_ms),
               nonce, sha(body))


def update_digest(task, party, spec_id, rnd, step, base, blob, blob_len, samples, min_cohort=0):
    d = [b"yosegi.v1.update\0", lp(task.encode()), lp(party.encode()), spec_id, u64(rnd), u64(step),
         base, blob, u64(blob_len), u64(samples)]
    if min_cohort > 0:  # the bracketed tail: only when the site requires a cohort
        d += [b"min_cohort", u64(min_cohort)]
    return sha(*d)


def canonical_spec(spec):
    """The validated spec as compact JSON, keys in the documented order, defaults filled in."""
    t, m, tr = spec["task"], spec["model"], spec["training"]
    kind = {"kind": t["kind"]} | ({"classes": t["classes"]} if t["kind"] == "multiclass" else {})
    out = {"name": spec["name"],
           "task": {"kind": kind, "target": t["target"], "features": t["features"]},
           "model": {"hidden": m["hidden"], "activation": m.get("activation", "relu"),
                     "dropout": float(m.get("dropout", 0.0))},
           "training": {"optimizer": tr.get("optimizer", "adam"),
                        "learning_rate": float(tr["learning_rate"]),
                        "local_epochs": tr["local_epochs"], "batch_size": tr["batch_size"],
                        "seed": tr["seed"], "fedprox_mu": tr.get("fedprox_mu"),
                        "weight_decay": float(tr.get("weight_decay", 0.0))}}
    p = spec.get("privacy", {})
    if "dp" in p:  # not needed for wdbc; the defaults of dp are not spelled out here
        raise SystemExit("canonical_spec: [privacy.dp] is not implemented by this party")
    if "membership_max_advantage" in p:
        out["privacy"] = {"membership_max_advantage": float(p["membership_max_advantage"])}
    # Python's float repr is the shortest round-trip form, as the spec id wants for the numbers
    # of wdbc.toml (it writes exponents differently, `1e-05` for `1e-5`: PROTOCOL.md "The spec
    # id"; none here). json escapes only ", \ and controls.
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


def spec_id(spec):
    return hashlib.sha256(b"yosegi.spec.v1\n" + canonical_spec(spec).encode()).hexdigest()


def check_vectors(doc_path):
    """Parse every test vector out of PROTOCOL.md and reproduce it; exit loudly on a mismatch."""
    doc = re.sub(r"\s+", " ", Path(doc_path).read_text())
    def grab(pattern):
        m = re.search(pattern, doc)
        if not m:
            raise SystemExit(f"vector not found in {doc_path}: {pattern}")
        return m.groups()
    def same(what, got, want):
        if got != want:
            raise SystemExit(f"VECTOR MISMATCH {what}: computed {got}, PROTOCOL.md says {want}")
    # Call proof v2.
    sk, method, caller, ts, nonce, body = grab(
        r"secret key 32 bytes of `0x(..)`, method `([^`]+)`, caller `([^`]+)`, timestamp "
        r"`(\d+)`, nonce 16 bytes of `0x(..)`, first message the bytes `([0-9a-f ]+)`")
    b_hex, = grab(r"\| `body` \| `([0-9a-f]{64})` \|")
    d_hex, = grab(r"\| digest \| `([0-9a-f]{64})` \|")
    s_hex, = grab(r"\| signature \| `([0-9a-f]{128})` \|")
    body = bytes.fromhex(body.replace(" ", ""))
    same("call body", sha(body).hex(), b_hex)
    dig = call_digest(method, caller, int(ts), bytes([int(nonce, 16)]) * 16, body)
    same("call digest", dig.hex(), d_hex)
    key = Ed25519PrivateKey.from_private_bytes(bytes([int(sk, 16)]) * 32)
    same("call signature", key.sign(dig).hex(), s_hex)
    # Spec id: our canonical JSON of data/wdbc.toml == the doc's text, and its hash == the doc's id.
    text, sid = grab(r"`data/wdbc\.toml` gives ``` (\{.*?\}) ``` and the spec id `([0-9a-f]{64})`")
    same("spec id of the documented text",
         hashlib.sha256(b"yosegi.spec.v1\n" + text.encode()).hexdigest(), sid)
    wdbc = tomllib.loads((ROOT / "data/wdbc.toml").read_text())
    same("canonical JSON of data/wdbc.toml", canonical_spec(wdbc), text)
    # Signed update digest, without and with min_cohort.
    task, party, rnd, step, base, blob, blen, n, d0, mc, d1 = grab(
        r"for task `([^`]+)`, party `([^`]+)`, that spec id, round (\d+), step (\d+), base model "
        r"32 × `0x(..)`, blob 32 × `0x(..)`, blob_len (\d+), sample_count (\d+) the digest is "
        r"`([0-9a-f]{64})`, and with min_cohort (\d+) `([0-9a-f]{64})`")
    args = (task, party, bytes.fromhex(sid), int(rnd), int(step), bytes([int(base, 16)]) * 32,
            bytes([int(blob, 16)]) * 32, int(blen), int(n))
    same("update digest", update_digest(*args).hex(), d0)
    same("update digest with min_cohort", update_digest(*args, min_cohort=int(mc)).hex(), d1)
    log(f"test vectors of {doc_path} reproduced (call proof v2, spec id {sid[:12]}…, update digests)")


# --- The model (PROTOCOL.md "Weight blobs") -----------------------------------------------------

ACT = {"relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(z.dtype)),
       "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
       "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda z: (s := 1 / (1 + np.exp(-z))) * (1 - s))}


def decode_blob(blob, spec, sid):
    """Strict decode: exactly the documented tensors, F32, shapes, finite, and the metadata."""
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    meta = header.pop("__metadata__", {})
    if meta.get("format") != "yosegi.weights.v1" or meta.get("spec_id") != sid or "kind" in meta:
        raise ValueError(f"not a plain network blob of this spec: {meta}")
    widths = [len(spec["task"]["features"]), *spec["model"]["hidden"], 1]
    want = {"norm.mean": [widths[0]], "norm.std": [widths[0]]}
    for i in range(len(widths) - 1):
        want[f"layers.{i}.weight"] = [widths[i + 1], widths[i]]
        want[f"layers.{i}.bias"] = [widths[i + 1]]
    got = {k: v["shape"] for k, v in header.items() if v.get("dtype") == "F32"}
    if got != want:
        raise ValueError(f"tensors {got} differ from the spec's {want}")
    t = {k: v.astype(np.float64) for k, v in st_load(blob).items()}
    if not all(np.isfinite(v).all() for v in t.values()) or (t["norm.std"] <= 0).any():
        raise ValueError("non-finite values or std <= 0")
    return t, len(widths) - 1


def forward(t, layers, x, act, dropout=0.0, rng=None):
    """Logits and, per layer, (input, pre-activation, dropout mask) for backprop."""
    h, cache = (x - t["norm.mean"]) / t["norm.std"], []  # the model normalises raw features
    for i in range(layers):
        z = h @ t[f"layers.{i}.weight"].T + t[f"layers.{i}.bias"]
        if i == layers - 1:  # no activation after the last layer: one logit
            return z[:, 0], cache + [(h, z, 1.0)]
        # Inverted dropout after each hidden layer, in training only.
        mask = (rng.random(z.shape) >= dropout) / (1 - dropout) if rng is not None else 1.0
        cache.append((h, z, mask))
        h = ACT[act][0](z) * mask


def train(t, layers, x, y, spec, rng):
    """Mini-batch Adam on BCE-with-logits, L2 on weights (not biases); norm.* never trained."""
    tr, act = spec["training"], spec["model"].get("activation", "relu")
    lr, wd, bs = tr["learning_rate"], tr.get("weight_decay", 0.0), tr["batch_size"]
    dropout, df = spec["model"].get("dropout", 0.0), ACT[act][1]
    names = [f"layers.{i}.{k}" for i in range(layers) for k in ("weight", "bias")]
    m, v = ({k: np.zeros_like(t[k]) for k in names} for _ in range(2))
    step = 0
    for _ in range(tr["local_epochs"]):
        order = rng.permutation(len(y))
        for s in range(0, len(y), bs):
            idx = order[s:s + bs]
            logit, cache = forward(t, layers, x[idx], act, dropout, rng)
            g = ((1 / (1 + np.exp(-logit)) - y[idx]) / len(idx))[:, None]  # dBCE/dlogit
            grads = {}
            for i in reversed(range(layers)):
                w = t[f"layers.{i}.weight"]
                grads[f"layers.{i}.weight"] = g.T @ cache[i][0] + wd * w
                grads[f"layers.{i}.bias"] = g.sum(0)
                if i > 0:
                    _, z, mask = cache[i - 1]
                    g = (g @ w) * mask * df(z)
            step += 1
            for k in names:  # Adam, β = (0.9, 0.999), ε = 1e-8
                m[k] = 0.9 * m[k] + 0.1 * grads[k]
                v[k] = 0.999 * v[k] + 0.001 * grads[k] ** 2
                t[k] -= lr * (m[k] / (1 - 0.9 ** step)) / (np.sqrt(v[k] / (1 - 0.999 ** step)) + 1e-8)
    return t


def metric_stats(t, layers, x, y, act):
    """MetricStats, kind binary (PROTOCOL.md "Reports beside the weights")."""
    p = 1 / (1 + np.exp(-forward(t, layers, x, act)[0]))
    pos = p >= 0.5
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    bins = np.minimum(np.floor(p * 1000), 999).astype(int)
    return json.dumps({
        "kind": "binary",
        "tp": int((pos & (y == 1)).sum()), "fp": int((pos & (y == 0)).sum()),
        "tn": int((~pos & (y == 0)).sum()), "fn": int((~pos & (y == 1)).sum()),
        "log_loss_sum": float(-(np.log(pc[y == 1]).sum() + np.log(1 - pc[y == 0]).sum())),
        "pos_hist": np.bincount(bins[y == 1], minlength=1000).tolist(),
        "neg_hist": np.bincount(bins[y == 0], minlength=1000).tolist()})


# --- The party ---------------------------------------------------------------------------------

class Party:
    def __init__(self, a):
        self.a, self.name = a, a.name
        self.key = load_pem_private_key(Path(a.key).read_bytes(), None)
        self.pub = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.coord = load_pem_public_key(Path(a.coordinator_key).read_bytes())
        self.spec = tomllib.loads(Path(a.spec).read_text())
        self.sid = spec_id(self.spec)  # the spec this site agreed to; other specs are declined
        self.act = self.spec["model"].get("activation", "relu")
        # CONFIG.md "TLS": the server certificate names localhost, 127.0.0.1 and every `init
        # --host`, so no name override is needed; the CA is pinned (no system roots).
        creds = grpc.ssl_channel_credentials(root_certificates=Path(a.ca).read_bytes())
        self.ch = grpc.secure_channel(a.server, creds)
        self.highest = {}  # highest accepted model version per task (in memory only)
        self.trained_base = None  # base version of the last round this party trained in
        self.load_data()

    def load_data(self):
        with open(self.a.data, newline="") as f:
            rows = list(csv.DictReader(f))
        feats, target = self.spec["task"]["features"], self.spec["task"]["target"]
        x = np.array([[float(r[c]) for c in feats] for r in rows])
        y = np.array([float(r[target]) for r in rows])
        order = np.random.default_rng(self.spec["training"]["seed"]).permutation(len(y))
        cut = round(0.8 * len(y))
        self.xt, self.yt = x[order[:cut]], y[order[:cut]]
        self.xh, self.yh = x[order[cut:]], y[order[cut:]]
        log(f"{len(y)} rows: {cut} training, {len(y) - cut} holdout")

    def proof(self, method, body):
        """Metadata of call proof v2 (PROTOCOL.md "Call authentication")."""
        ts, nonce = int(time.time() * 1000), os.urandom(16)
        sig = self.key.sign(call_digest(method, self.name, ts, nonce, body))
        return [("x-yosegi-protocol", str(PROTOCOL)), ("x-yosegi-release", "python-party"),
                ("x-yosegi-proof", "2"), ("x-yosegi-caller", self.name),
                ("x-yosegi-timestamp", str(ts)), ("x-yosegi-nonce", nonce.hex()),
                ("x-yosegi-signature-bin", sig)]

    def unary(self, name, req, resp_cls, timeout=30):
        """Encode once, sign the hash of those bytes, send those bytes (identity serializer);
        check the protocol the coordinator answers with (COMPATIBILITY.md)."""
        method, body = f"/yosegi.v1.PartyService/{name}", req.SerializeToString()
        call = self.ch.unary_unary(method, request_serializer=lambda b: b,
                                   response_deserializer=resp_cls.FromString)
        resp, info = call.with_call(body, metadata=self.proof(method, body), timeout=timeout)
        theirs = dict(info.initial_metadata())
        protocol = int(theirs.get("x-yosegi-protocol", "1"))
        if protocol < OLDEST_COORDINATOR:
            raise SystemExit(f"protocol skew: the coordinator speaks protocol {protocol} "
                             f"(release {theirs.get('x-yosegi-release', '0.1.0')}); this party "
                             f"needs {OLDEST_COORDINATOR} to {PROTOCOL}: upgrade the coordinator")
        if not getattr(self, "announced", False):
            log(f"coordinator speaks protocol {protocol} "
                f"(release {theirs.get('x-yosegi-release', '0.1.0')})")
            self.announced = True
        return resp

    def download(self, task, version):
        """DownloadModel, then verify manifest and blob (PROTOCOL.md "Manifests")."""
        method = "/yosegi.v1.PartyService/DownloadModel"
        body = pb.DownloadModelRequest(task=task, version=version).SerializeToString()
        call = self.ch.unary_stream(method, request_serializer=lambda b: b,
                                    response_deserializer=pb.DownloadModelResponse.FromString)
        parts = iter(call(body, metadata=self.proof(method, body), timeout=60))
        signed = next(parts).manifest
        try:
            self.coord.verify(signed.signature, sha(b"yosegi.v1.manifest\0", signed.canonical))
        except InvalidSignature:
            raise ValueError(f"manifest of {task} v{version}: bad coordinator signature")
        man = json.loads(signed.canonical)
        blob = bytearray()
        for part in parts:
            if part.chunk.offset != len(blob):
                raise ValueError("chunk offsets are not contiguous")
            blob += part.chunk.data
        blob = bytes(blob)
        if man["format"] != "yosegi.manifest.v1" or man["task"] != task or man["spec_id"] != self.sid:
            raise ValueError(f"manifest for another task or spec: {man['task']} {man['spec_id']}")
        if man["version"] != version or version < self.highest.get(task, 0):
            raise ValueError(f"manifest version {man['version']} (asked {version}) is a rollback")
        if man["expires_unix_ms"] < time.time() * 1000:
            raise ValueError("manifest expired")
        if len(blob) != man["blob_len"] or hashlib.sha256(blob).hexdigest() != man["blob_sha256"]:
            raise ValueError("blob differs from its manifest (length or sha256)")
        self.highest[task] = version
        return man, blob

    def decline(self, a, reason):
        log(f"declining {a.assignment_id}: {reason}")
        self.unary("DeclineAssignment", pb.DeclineAssignmentRequest(
            assignment_id=a.assignment_id, reason=reason), pb.DeclineAssignmentResponse)

    def stats(self, a):
        """Step 1: FeatureSums of exactly the training rows, in spec feature order."""
        sums = cpb.FeatureSums(count=len(self.yt), sum=self.xt.sum(0).tolist(),
                               sum_sq=(self.xt ** 2).sum(0).tolist())
        self.unary("SubmitFeatureSums", pb.SubmitFeatureSumsRequest(
            assignment_id=a.assignment_id, sums=sums), pb.SubmitFeatureSumsResponse)
        log(f"statistics: sums of {len(self.yt)} training rows submitted")

    def train(self, a):
        """Steps 3 and 4: download + verify base, train, sign, upload in chunks."""
        w = a.train
        o = w.overrides
        if w.strategy != "fedavg" or o.fedprox_mu or o.frozen_layers or self.spec["training"].get("fedprox_mu"):
            return self.decline(a, f"only plain fedavg is implemented here (round: {w.strategy})")
        man, base = self.download(a.task, w.base_version)
        if man["blob_sha256"] != w.base_sha256:
            raise ValueError("base model sha256 differs from the assignment's")
        t, layers = decode_blob(base, self.spec, self.sid)
        spec = json.loads(json.dumps(self.spec))  # apply the round's overrides to a copy
        spec["training"]["local_epochs"] = o.local_epochs or spec["training"]["local_epochs"]
        spec["training"]["learning_rate"] = o.learning_rate or spec["training"]["learning_rate"]
        rng = np.random.default_rng(self.spec["training"]["seed"] + a.round)
        t = train(t, layers, self.xt, self.yt, spec, rng)
        blob = st_save({k: v.astype(np.float32) for k, v in t.items()},
                       metadata={"format": "yosegi.weights.v1", "spec_id": self.sid, "role": "update"})
        bsha, n = hashlib.sha256(blob).digest(), len(self.yt)
        dig = update_digest(a.task, self.name, bytes.fromhex(a.spec_id), a.round, a.step,
                            bytes.fromhex(w.base_sha256), bsha, len(blob), n)
        env = pb.UpdateEnvelope(task=a.task, spec_id=a.spec_id, round=a.round, step=a.step,
                                base_model_sha256=w.base_sha256, party=self.name,
                                blob_sha256=bsha.hex(), blob_len=len(blob), sample_count=n,
                                signer_public_key=self.pub, signature=self.key.sign(dig))
        local = metric_stats(t, layers, self.xh, self.yh, self.act)
        first = pb.UploadUpdateRequest(start=pb.UploadStart(
            assignment_id=a.assignment_id, envelope=env,
            local_metrics=cpb.MetricStatsJson(json=local), membership_audit_json="")
        ).SerializeToString()
        msgs = [first] + [pb.UploadUpdateRequest(chunk=cpb.BlobChunk(offset=o, data=blob[o:o + CHUNK]))
                          .SerializeToString() for o in range(0, len(blob), CHUNK)]
        method = "/yosegi.v1.PartyService/UploadUpdate"
        call = self.ch.stream_unary(method, request_serializer=lambda b: b,
                                    response_deserializer=pb.UploadUpdateResponse.FromString)
        resp = call(iter(msgs), metadata=self.proof(method, first), timeout=60)
        if resp.status not in (pb.UPLOAD_STATUS_ACCEPTED, pb.UPLOAD_STATUS_ALREADY_ACCEPTED):
            raise ValueError(f"upload not accepted: {resp}")
        self.trained_base = w.base_version
        log(f"round {a.round}: trained on v{w.base_version}, uploaded {len(blob)} bytes "
            f"({pb.UploadStatus.Name(resp.status)}), local metrics {json.loads(local)['tp']} tp")

    def evaluate(self, a):
        """Step 5: verify the published version and report MetricStats on the holdout."""
        v = a.evaluate.version
        _, blob = self.download(a.task, v)
        t, layers = decode_blob(blob, self.spec, self.sid)
        stats = metric_stats(t, layers, self.xh, self.yh, self.act)
        self.unary("ReportEvaluation", pb.ReportEvaluationRequest(
            assignment_id=a.assignment_id, stats=cpb.MetricStatsJson(json=stats)),
            pb.ReportEvaluationResponse)
        s = json.loads(stats)
        acc = (s["tp"] + s["tn"]) / len(self.yh)
        log(f"evaluation of v{v} accepted: accuracy {acc:.3f} on {len(self.yh)} holdout rows")
        # Done once a version merged after our own training round is evaluated.
        return self.trained_base is not None and v > self.trained_base

    def run(self):
        end = time.time() + self.a.timeout
        while time.time() < end:
            r = self.unary("NextAssignment", pb.NextAssignmentRequest(wait_ms=10_000),
                           pb.NextAssignmentResponse, timeout=45)
            if not r.HasField("assignment"):
                continue
            a = r.assignment
            log(f"assignment {a.assignment_id} ({a.WhichOneof('work')})")
            if a.task != self.a.task:
                self.decline(a, f"task {a.task} is not one this site takes part in")
            elif a.spec_id != self.sid or spec_id(tomllib.loads(a.spec_toml)) != a.spec_id:
                self.decline(a, f"spec {a.spec_id[:12]}… is not the one this site agreed to")
            elif self.spec["task"]["kind"] != "binary" or self.act not in ACT:
                self.decline(a, "only binary tasks with relu/tanh/sigmoid are implemented here")
            elif a.HasField("stats"):
                self.stats(a)
            elif a.HasField("train"):
                self.train(a)
            elif a.HasField("evaluate") and self.evaluate(a):
                return 0
        raise SystemExit(f"no merged model evaluated within {self.a.timeout} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", required=True, help="host:port of the coordinator (TLS)")
    ap.add_argument("--ca", required=True, help="the coordinator's CA certificate, pinned")
    ap.add_argument("--name", required=True, help="this party's enrolled name")
    ap.add_argument("--key", required=True, help="its ed25519 private key (PKCS#8 PEM)")
    ap.add_argument("--coordinator-key", required=True, help="coordinator.pub.pem, pinned")
    ap.add_argument("--data", required=True, help="this site's CSV")
    ap.add_argument("--spec", required=True, help="the spec TOML this site agreed to")
    ap.add_argument("--task", required=True, help="the task (work of other tasks is declined)")
    ap.add_argument("--protocol-doc", default=ROOT / "docs/PROTOCOL.md")
    ap.add_argument("--timeout", type=float, default=240, help="give up after this many seconds")
    a = ap.parse_args()
    check_vectors(a.protocol_doc)
    return Party(a).run()


if __name__ == "__main__":
    sys.exit(main())
