//! A simulated party of the crash test: reports sums, trains (random weights of the spec's
//! shapes, with a simulated training time), uploads signed updates and logs every ack.

use super::*;

/// An acknowledgement a party received.
#[derive(Clone, Debug)]
pub(super) struct AckLog {
    pub(super) party: String,
    pub(super) round: u64,
    pub(super) blob: Sha256,
    pub(super) again: bool,
}

fn is_refusal(e: &anyhow::Error) -> bool {
    let s = e.to_string();
    [
        "InvalidArgument",
        "FailedPrecondition",
        "AlreadyExists",
        "PermissionDenied",
        "NotFound",
        "Unauthenticated",
    ]
    .iter()
    .any(|code| s.contains(&format!("coordinator said {code}")))
}

pub(super) struct Party {
    pub(super) name: String,
    pub(super) key: SigningKey,
    pub(super) index: u64,
}

pub(super) struct Shared {
    pub(super) url: String,
    pub(super) tls: ClientTls,
    pub(super) spec: ModelSpec,
    pub(super) done: AtomicBool,
    pub(super) acks: Mutex<Vec<AckLog>>,
}

/// One simulated party: polls, reports sums, declines evaluations, and for every training
/// assignment uploads its (deterministic) random update, retrying through outages until the
/// upload is acknowledged or refused. Runs until the test says done.
pub(super) async fn party(shared: Arc<Shared>, p: Party) {
    let pause = || tokio::time::sleep(Duration::from_millis(40));
    let mut client: Option<PartyClient> = None;
    while !shared.done.load(Ordering::SeqCst) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => {
                match PartyClient::connect_with(&shared.url, &shared.tls, &p.name, p.key.clone())
                    .await
                {
                    Ok(c) => client = Some(c),
                    Err(_) => pause().await,
                }
                continue;
            }
        };
        let a = match c.next_assignment(500).await {
            Ok(Some(a)) => a,
            Ok(None) => continue,
            Err(_) => {
                client = None;
                pause().await;
                continue;
            }
        };
        let (base_version, base_sha) = match &a.work {
            Work::Stats => {
                // As many rows as the party claims to train on (honest: a claim above the rows
                // reported here is capped at the merge).
                let rows: Vec<f32> = (0..(10 + p.index as usize) * 16)
                    .map(|i| ((i as u64 * 7 + p.index * 13) % 23) as f32 / 23.0)
                    .collect();
                let _ = c.submit_sums(&a.id, &FeatureSums::of_rows(&rows, 16)).await;
                continue;
            }
            Work::Evaluate { .. } => {
                let _ = c.decline(&a.id, "simulated party: no holdout").await;
                continue;
            }
            Work::Train {
                base_version,
                base_sha256,
                ..
            } => (*base_version, base_sha256.clone()),
        };
        let Ok((_, base)) = c
            .download(TASK, base_version, max_model_blob_bytes(&shared.spec))
            .await
        else {
            client = None;
            pause().await;
            continue;
        };
        assert_eq!(
            Sha256::of(&base).to_string(),
            base_sha,
            "base model {base_version} as downloaded by {}",
            p.name
        );
        let (spec, key, name, round, step, index) = (
            shared.spec.clone(),
            p.key.clone(),
            p.name.clone(),
            a.round,
            a.step,
            p.index,
        );
        // Local training takes a while at a real site: 10–60 ms here, so that rounds last
        // about as long as the gaps between kills and the kills keep landing in live rounds.
        tokio::time::sleep(Duration::from_millis(10 + ((index * 31 + round * 17) % 50))).await;
        let (blob, env) = tokio::task::spawn_blocking(move || {
            random_update(&RandomUpdate {
                spec: &spec,
                base: &base,
                base_version,
                task: TaskId::new(TASK).unwrap(),
                round,
                step,
                party: PartyId::new(&name).unwrap(),
                samples: 10 + index,
                seed: (index << 32) ^ round,
                key: &key,
            })
            .expect("builds the update")
        })
        .await
        .unwrap();
        // The same bytes until acknowledged: after a crash the coordinator either has them
        // (AlreadyAccepted) or not (Accepted now).
        loop {
            if shared.done.load(Ordering::SeqCst) {
                return;
            }
            let c = match client.as_mut() {
                Some(c) => c,
                None => {
                    match PartyClient::connect_with(
                        &shared.url,
                        &shared.tls,
                        &p.name,
                        p.key.clone(),
                    )
                    .await
                    {
                        Ok(c) => client = Some(c),
                        Err(_) => pause().await,
                    }
                    continue;
                }
            };
            match c.upload(&a.id, &env, blob.clone(), None).await {
                Ok(ack) => {
                    shared.acks.lock().unwrap().push(AckLog {
                        party: p.name.clone(),
                        round: a.round,
                        blob: env.header.blob_sha256,
                        again: ack == Ack::AlreadyAccepted,
                    });
                    break;
                }
                Err(e) if is_refusal(&e) => {
                    panic!("{} round {}: upload refused: {e:#}", p.name, a.round)
                }
                Err(_) => {
                    client = None;
                    pause().await;
                }
            }
        }
    }
}
