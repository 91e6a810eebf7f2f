//! Receiving an upload stream. Admission limits first — one stream per assignment, a few per
//! party, a bound overall, each refused with RESOURCE_EXHAUSTED naming the limit — then the
//! chunks, written to a staged temp file and hashed as they arrive, so an upload is never held
//! in memory while it streams in. A stream that breaks (stalls, sends more than declared, skips
//! bytes, sends a malformed message) is a [`StreamFault`] the handler records; the records of
//! one party are rate-limited ([`FaultRecords`]) so a flood cannot fill the governance log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Status, Streaming};
use yosegi_proto::v1 as pb;

use crate::blobs::Staged;

/// How many upload streams may be open at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadLimit {
    /// Over all parties.
    pub overall: usize,
    /// Per party (each assignment has at most one open stream besides).
    pub per_party: usize,
}

impl Default for UploadLimit {
    fn default() -> Self {
        Self {
            overall: 256,
            per_party: 4,
        }
    }
}

/// The open upload streams, counted per party and per assignment.
#[derive(Debug)]
pub(super) struct UploadSlots {
    limit: UploadLimit,
    overall: Arc<Semaphore>,
    open: Mutex<HashMap<String, Vec<String>>>,
}

/// One admitted stream; its place is freed when it is dropped, however the call ends.
#[derive(Debug)]
pub(super) struct UploadSlot {
    slots: Arc<UploadSlots>,
    party: String,
    assignment: String,
    _permit: OwnedSemaphorePermit,
}

impl UploadSlots {
    pub(super) fn new(limit: UploadLimit) -> Arc<Self> {
        Arc::new(Self {
            limit,
            overall: Arc::new(Semaphore::new(limit.overall)),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Streams open now.
    pub(super) fn in_flight(&self) -> usize {
        self.limit.overall - self.overall.available_permits()
    }

    /// Admits a stream of `party` for `assignment`, or names the limit it would pass; the
    /// error's second part is the limit's metric label.
    pub(super) fn admit(
        self: &Arc<Self>,
        party: &str,
        assignment: &str,
    ) -> Result<UploadSlot, (Status, &'static str)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine: &[String] = open.get(party).map_or(&[], Vec::as_slice);
        if mine.iter().any(|a| a == assignment) {
            return Err((
                Status::resource_exhausted(format!(
                    "{party} already has an upload stream open for assignment {assignment}; one per assignment is allowed (wait for it to end)"
                )),
                "per_assignment",
            ));
        }
        if mine.len() >= self.limit.per_party {
            return Err((
                Status::resource_exhausted(format!(
                    "{party} already has {} upload streams open, the limit per party (upload_streams_per_party)",
                    mine.len()
                )),
                "per_party",
            ));
        }
        let permit = self.overall.clone().try_acquire_owned().map_err(|_| {
            (
                Status::resource_exhausted(format!(
                    "the coordinator has {} upload streams open, its limit (upload_streams); retry shortly",
                    self.limit.overall
                )),
                "overall",
            )
        })?;
        open.entry(party.to_string())
            .or_default()
            .push(assignment.to_string());
        Ok(UploadSlot {
            slots: self.clone(),
            party: party.to_string(),
            assignment: assignment.to_string(),
            _permit: permit,
        })
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mine) = open.get_mut(&self.party) {
            mine.retain(|a| *a != self.assignment);
            if mine.is_empty() {
                open.remove(&self.party);
            }
        }
    }
}

/// How an upload stream broke before its blob was complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum StreamFault {
    /// Nothing arrived for the idle limit.
    Stalled { secs: u64, received: u64 },
    /// The stream took longer than its length allows at the slowest accepted rate.
    TooSlow {
        secs: u64,
        received: u64,
        declared: u64,
    },
    /// More bytes than the envelope declares.
    TooLong { declared: u64 },
    /// A chunk that does not follow the bytes received.
    Gap { offset: u64, expected: u64 },
    /// A second envelope, or an empty message, after the first.
    NotAChunk,
    /// A chunk without bytes (it would only keep the stream alive).
    EmptyChunk,
    /// A message that does not decode, or a broken transport.
    Broken {
        status: tonic::Code,
        message: String,
    },
    /// The staging file could not be written (the coordinator's fault, not the party's).
    Storage(String),
}

impl StreamFault {
    /// The rejection code (and metric label) of the fault.
    pub(super) fn code(&self) -> &'static str {
        match self {
            Self::Stalled { .. } => "stalled",
            Self::TooSlow { .. } => "too_slow",
            Self::TooLong { .. } => "too_long",
            Self::Gap { .. } => "chunk_gap",
            Self::NotAChunk => "not_a_chunk",
            Self::EmptyChunk => "empty_chunk",
            Self::Broken {
                status: tonic::Code::InvalidArgument,
                ..
            } => "malformed",
            Self::Broken { .. } => "broken",
            Self::Storage(_) => "storage",
        }
    }

    /// Whether it is the party's doing (recorded against it) rather than the coordinator's.
    pub(super) fn is_party_fault(&self) -> bool {
        !matches!(self, Self::Storage(_))
    }

    /// The reason, naming the party.
    pub(super) fn reason(&self, party: &str) -> String {
        match self {
            Self::Stalled { secs, received } => format!(
                "upload of {party} sent nothing for {secs} s after {received} bytes; dropped"
            ),
            Self::TooSlow {
                secs,
                received,
                declared,
            } => format!(
                "upload of {party} sent {received} of {declared} bytes in {secs} s, slower than upload_min_kib_per_sec allows; dropped"
            ),
            Self::TooLong { declared } => format!(
                "upload of {party} sends more than the {declared} bytes its envelope declares"
            ),
            Self::Gap { offset, expected } => format!(
                "upload of {party}: chunk at offset {offset} does not follow byte {expected}"
            ),
            Self::NotAChunk => {
                format!("upload of {party}: only chunks may follow the envelope")
            }
            Self::EmptyChunk => format!("upload of {party}: a chunk carries no bytes"),
            Self::Broken { message, .. } => {
                format!("upload of {party} broke off: {message}")
            }
            Self::Storage(e) => {
                format!("upload of {party}: coordinator storage failed, nothing was stored: {e}")
            }
        }
    }

    /// The status the party reads.
    pub(super) fn status(&self, party: &str) -> Status {
        let reason = self.reason(party);
        match self {
            Self::Stalled { .. } | Self::TooSlow { .. } => Status::deadline_exceeded(reason),
            Self::Storage(_) => Status::unavailable(reason),
            Self::Broken { status, .. } if *status != tonic::Code::InvalidArgument => {
                Status::new(*status, reason)
            }
            _ => Status::invalid_argument(reason),
        }
    }
}

/// A streamed message that carries either a start or a chunk of a blob.
pub(super) trait ChunkPart {
    /// The chunk, or `None` for anything else.
    fn chunk(self) -> Option<pb::BlobChunk>;
}

impl ChunkPart for pb::UploadUpdateRequest {
    fn chunk(self) -> Option<pb::BlobChunk> {
        match self.part {
            Some(pb::upload_update_request::Part::Chunk(c)) => Some(c),
            _ => None,
        }
    }
}

impl ChunkPart for pb::RestoreModelRequest {
    fn chunk(self) -> Option<pb::BlobChunk> {
        match self.part {
            Some(pb::restore_model_request::Part::Chunk(c)) => Some(c),
            _ => None,
        }
    }
}

/// How fast a stream must send: something every `idle`, and all of its declared length within
/// `idle` plus the length at `min_rate` bytes per second (a party cannot hold a stream open by
/// trickling a byte per `idle`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Pace {
    pub(super) idle: Duration,
    pub(super) min_rate: u64,
}

impl Pace {
    /// The longest a stream of `declared` bytes may take.
    fn limit(&self, declared: u64) -> Duration {
        self.idle + Duration::from_secs_f64(declared as f64 / self.min_rate.max(1) as f64)
    }
}

/// Receives the chunks after the first message into `staged` until the stream ends, at most
/// `declared` bytes, each chunk written and hashed on a blocking thread, at `pace` or faster.
pub(super) async fn receive<M: ChunkPart>(
    stream: &mut Streaming<M>,
    mut staged: Staged,
    declared: u64,
    pace: Pace,
) -> Result<Staged, StreamFault> {
    let started = Instant::now();
    let until = started + pace.limit(declared);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(pace.idle.min(left), stream.message())
            .await
            .map_err(|_| {
                if left <= pace.idle {
                    StreamFault::TooSlow {
                        secs: started.elapsed().as_secs(),
                        received: staged.len(),
                        declared,
                    }
                } else {
                    StreamFault::Stalled {
                        secs: pace.idle.as_secs(),
                        received: staged.len(),
                    }
                }
            })?;
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(staged),
            Err(s) => {
                return Err(StreamFault::Broken {
                    status: s.code(),
                    message: s.message().to_string(),
                });
            }
        };
        let Some(c) = msg.chunk() else {
            return Err(StreamFault::NotAChunk);
        };
        if c.data.is_empty() {
            return Err(StreamFault::EmptyChunk);
        }
        if c.offset != staged.len() {
            return Err(StreamFault::Gap {
                offset: c.offset,
                expected: staged.len(),
            });
        }
        if staged.len() + c.data.len() as u64 > declared {
            return Err(StreamFault::TooLong { declared });
        }
        let (back, written) = tokio::task::spawn_blocking(move || {
            let r = staged.write(&c.data);
            (staged, r)
        })
        .await
        .map_err(|e| StreamFault::Storage(e.to_string()))?;
        staged = back;
        written.map_err(|e| StreamFault::Storage(e.to_string()))?;
    }
}

/// How many stream faults of one party are written to the governance log per window; the
/// rest are counted in metrics and summed up in the coordinator's log.
#[derive(Debug)]
pub(super) struct FaultRecords {
    per_window: u32,
    window: Duration,
    seen: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Default for FaultRecords {
    fn default() -> Self {
        Self {
            per_window: 10,
            window: Duration::from_secs(60),
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl FaultRecords {
    /// Whether a fault of `party` seen at `now` may be recorded; `Err(n)` when it is the
    /// first one over the limit in this window (`n` = the limit), `Ok(false)` for later ones.
    pub(super) fn admit(&self, party: &str, now: Instant) -> Result<bool, u32> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 10_000 {
            seen.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        }
        let entry = seen.entry(party.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        match entry.1.cmp(&(self.per_window + 1)) {
            std::cmp::Ordering::Less => Ok(true),
            std::cmp::Ordering::Equal => Err(self.per_window),
            std::cmp::Ordering::Greater => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_slots_hold_one_stream_per_assignment_and_free_it_on_drop() {
        let slots = UploadSlots::new(UploadLimit {
            overall: 3,
            per_party: 2,
        });
        let a = slots.admit("plant-a", "t/train/1").unwrap();
        let (s, label) = slots.admit("plant-a", "t/train/1").unwrap_err();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(label, "per_assignment");
        let b = slots.admit("plant-a", "u/train/1").unwrap();
        let (s, label) = slots.admit("plant-a", "v/train/1").unwrap_err();
        assert_eq!(label, "per_party");
        assert!(s.message().contains("upload_streams_per_party"), "{s:?}");
        let c = slots.admit("plant-b", "t/train/1").unwrap();
        let (s, label) = slots.admit("plant-c", "t/train/1").unwrap_err();
        assert_eq!(label, "overall");
        assert!(s.message().contains("upload_streams"), "{s:?}");
        assert_eq!(slots.in_flight(), 3);
        drop((a, b, c));
        assert_eq!(slots.in_flight(), 0);
        assert!(slots.open.lock().unwrap().is_empty());
        slots.admit("plant-a", "t/train/1").unwrap();
    }

    #[test]
    fn fault_records_are_rate_limited_per_party_and_window() {
        let r = FaultRecords {
            per_window: 2,
            window: Duration::from_secs(60),
            seen: Mutex::new(HashMap::new()),
        };
        let t = Instant::now();
        assert_eq!(r.admit("a", t), Ok(true));
        assert_eq!(r.admit("a", t), Ok(true));
        assert_eq!(r.admit("a", t), Err(2));
        assert_eq!(r.admit("a", t), Ok(false));
        assert_eq!(r.admit("b", t), Ok(true));
        assert_eq!(r.admit("a", t + Duration::from_secs(61)), Ok(true));
    }
}
