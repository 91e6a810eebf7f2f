//! Bounded fuzzing inside `cargo test`: the decoders that read bytes from outside — weight
//! blobs of every kind, signed update envelopes, signed manifests, site CSVs, model specs —
//! get random bytes and structure-aware mutations of valid inputs, each call under
//! `catch_unwind`. A case fails when the code panics, or when a decoder accepts an input that
//! it must refuse (an oracle per target). See docs/FUZZING.md.
//!
//! `YOSEGI_FUZZ_ITERS` sets the cases per target (default [`DEFAULT_ITERS`]),
//! `YOSEGI_FUZZ_SEED` the seed (default 0), `YOSEGI_FUZZ_CASE` runs one case alone and prints
//! its input. Case `i` of a target draws from the ChaCha8
//! stream `i` of the seed, so cases do not depend on each other; a failure prints the
//! target, seed, case, what the case was and the input as hex, ready to become a regression
//! test in `regressions.rs`.

mod fixtures;
mod mutate;
mod regressions;
mod targets;
mod text_targets;

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Cases per target when `YOSEGI_FUZZ_ITERS` is unset: the whole file runs in a few seconds.
pub const DEFAULT_ITERS: u64 = 10_000;

/// Failures printed per target (the count is reported in full).
const SHOWN: usize = 5;

/// Cases per target and the seed, from the environment.
pub fn config() -> (u64, u64) {
    let var = |name: &str, default: u64| match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, found {v:?}")),
        Err(_) => default,
    };
    let iters = var("YOSEGI_FUZZ_ITERS", DEFAULT_ITERS);
    // Zero cases would pass every target without running one.
    assert!(iters > 0, "YOSEGI_FUZZ_ITERS must be at least 1, found 0");
    (iters, var("YOSEGI_FUZZ_SEED", 0))
}

/// One failed case.
struct Failure {
    case: u64,
    input: Vec<u8>,
    kind: String,
    message: String,
}

thread_local! {
    /// Set while a case runs: its panics are reported by [`run`], not by the panic hook.
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    /// Where the last panic inside a case happened.
    static PANIC_AT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Silences the panic hook for panics inside cases (recording their location instead), so a
/// crash found in many cases prints one report rather than a backtrace per case.
fn quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) {
                let at = info.location().map(|l| l.to_string()).unwrap_or_default();
                PANIC_AT.with(|p| *p.borrow_mut() = at);
            } else {
                default(info);
            }
        }));
    });
}

/// Runs `iters` cases of a target. `generate` builds the input and what kind of case it is
/// (e.g. whether it must be refused) from the case's RNG; `check` runs the code under test and
/// returns `Err` when an oracle is violated. Panics (with each failure's seed, case, kind and
/// hex input) if any case panicked or broke an oracle.
pub fn run<K: std::fmt::Debug>(
    target: &str,
    mut generate: impl FnMut(&mut ChaCha8Rng) -> (Vec<u8>, K),
    check: impl Fn(&[u8], &K) -> Result<(), String>,
) {
    let (iters, seed) = config();
    quiet_hook();
    let started = Instant::now();
    let mut failures = Vec::new();
    let only: Option<u64> = std::env::var("YOSEGI_FUZZ_CASE").ok().map(|v| {
        v.trim()
            .parse()
            .expect("YOSEGI_FUZZ_CASE must be a case number")
    });
    for case in only.map_or(0..iters, |c| c..c + 1) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(case);
        let (input, kind) = generate(&mut rng);
        if only.is_some() {
            eprintln!(
                "fuzz {target} case {case} ({kind:?}): {}",
                hex::encode(&input)
            );
        }
        IN_CASE.with(|c| c.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&input, &kind)));
        IN_CASE.with(|c| c.set(false));
        let message = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(broken)) => format!("oracle: {broken}"),
            Err(panic) => format!(
                "panic at {}: {}",
                PANIC_AT.with(|p| p.borrow().clone()),
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(non-string payload)")
            ),
        };
        failures.push(Failure {
            case,
            input,
            kind: format!("{kind:?}"),
            message,
        });
    }
    eprintln!(
        "fuzz {target}: {iters} cases, seed {seed}, {:.2?}, {} failures",
        started.elapsed(),
        failures.len()
    );
    if failures.is_empty() {
        return;
    }
    let mut report = format!(
        "fuzz {target}: {} of {iters} cases failed\n",
        failures.len()
    );
    for f in failures.iter().take(SHOWN) {
        report += &format!(
            "- YOSEGI_FUZZ_SEED={seed} case {} ({}): {}\n  input ({} bytes): {}\n",
            f.case,
            f.kind,
            f.message,
            f.input.len(),
            hex::encode(&f.input)
        );
    }
    panic!("{report}");
}
