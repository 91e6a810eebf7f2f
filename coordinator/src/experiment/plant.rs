//! One simulated plant's turn in a round, in memory: what its daemon does (train, DP, the
//! membership gate: [`contribute::prepare`]), an attacker's poisoning, and what the coordinator
//! does with the bytes (encode, sign, verify).

use super::*;

/// Poisoning of an update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Attack {
    SignFlip(f32),
}

pub(super) fn parse_attack(s: &str) -> anyhow::Result<Attack> {
    match s.split_once(':') {
        Some(("sign-flip", v)) => {
            Ok(Attack::SignFlip(v.parse().with_context(|| {
                format!("--attack sign-flip:SCALE needs a number, found {v:?}")
            })?))
        }
        _ => anyhow::bail!("--attack must be sign-flip:SCALE, found {s:?}"),
    }
}

/// What one simulated plant's turn gives the coordinator.
pub(super) enum Turn {
    /// A verified update, its blob's hash and the bytes moved up.
    Upload(Box<VerifiedUpdate>, Sha256, u64),
    /// The plant declined, with the reason a live plant would send.
    Declined(String),
}

/// The party side and the coordinator side of one update, in memory: the plant's turn as the
/// daemon runs it (train, DP, membership gate: [`contribute::prepare`]), (poison,) encode, sign,
/// verify.
#[allow(clippy::too_many_arguments)]
pub(super) fn exchange(
    s: &Setup,
    cfg: &StrategyConfig,
    party: usize,
    base: &Model,
    base_bytes: &[u8],
    pass: u64,
    round: RoundNo,
    step: usize,
    attack: Option<Attack>,
    key: &shared_model::SigningKey,
) -> anyhow::Result<Turn> {
    let (name, rows) = &s.parties[party];
    // The seed follows the pass over the parties (the experiment's round), as it always has.
    let seed = s.spec.training.seed ^ (pass << 20) ^ (party as u64) << 8;
    let opts = cfg.train_options(&s.spec, step, seed);
    // The party's DP noise is seeded so a run is reproducible.
    let mut rng = dp::seeded_rng(seed ^ 0xd1ff_9a7e);
    let out = if attack.is_some() {
        // An attacker uploads what it likes: it runs no membership gate of its own.
        let out = local_update(&s.spec, &cfg.name, name, base, &rows.train, &opts)?;
        match &s.spec.privacy.dp {
            Some(d) => dp::privatize(d, &cfg.name, base, out, &mut rng)?,
            None => out,
        }
    } else {
        let prepared = contribute::prepare(
            &s.spec,
            &cfg.name,
            name,
            base,
            rows,
            &opts,
            None,
            &mut rng,
            &mut |_, _| {},
        )?;
        match prepared {
            Prepared::Ready(c) => c.update,
            Prepared::Withheld { reason, .. } => return Ok(Turn::Declined(reason)),
        }
    };
    let mut weights = out.weights;
    if let Some(Attack::SignFlip(scale)) = attack {
        weights = match base.start_for(name) {
            Some(b) if out.stage == 0 => weights.map_trainable(|t| {
                let bt = b
                    .trainable()
                    .iter()
                    .find(|x| x.name == t.name)
                    .expect("same layout");
                t.data
                    .iter()
                    .zip(&bt.data)
                    .map(|(&w, &b)| b - scale * (w - b))
                    .collect()
            })?,
            _ => weights.map_trainable(|t| t.data.iter().map(|w| -scale * w).collect())?,
        };
    }
    if let (Some(d), Some(b)) = (&s.spec.privacy.dp, base.start_for(name))
        && d.mode == DpMode::Central
        && attack.is_some()
    {
        // A live coordinator rejects a delta beyond the clip in central mode (`dp_clip`): the
        // most an attacker can send is a clipped one.
        weights = dp::clip_delta(b, &weights, d.clip)
            .map_err(|e| anyhow::anyhow!("clipping an attacker's update: {e}"))?
            .0;
    }
    let bytes = encode(&weights, &BlobMeta::new(&s.spec, BlobRole::Update));
    let task = TaskId::new(TASK)?;
    let party_id = PartyId::new(name)?;
    let base_sha = Sha256::of(base_bytes);
    let env = SignedUpdate::for_blob(
        task.clone(),
        s.spec.id(),
        round,
        StepNo(step as u64),
        base_sha,
        party_id.clone(),
        &bytes,
        out.samples as u64,
        key,
    );
    let verified = verify(
        &env,
        &bytes,
        &key.verifying_key(),
        &Expectations {
            task: &task,
            spec: &s.spec,
            round,
            step: StepNo(step as u64),
            base_model: base_sha,
            party: &party_id,
            // What the coordinator expects, from the base: not what the party says it trained.
            stage: cfg.expected_stage(base),
        },
    )?;
    base.check_update_normalization(verified.weights(), s.spec.input_width())
        .map_err(|why| anyhow::anyhow!("update of {name}: {why}"))?;
    Ok(Turn::Upload(
        Box::new(verified),
        Sha256::of(&bytes),
        bytes.len() as u64,
    ))
}
