//! The protocol version: one number for the whole wire contract — the services, the signed
//! byte formats, the blob and manifest layouts — raised whenever a release changes any of them
//! (docs/COMPATIBILITY.md). Every call carries [`PROTOCOL_HEADER`] and [`RELEASE_HEADER`], and
//! every answer of the coordinator carries its own. Release 0.1.0 spoke protocol 1 and sent
//! neither: a call without [`PROTOCOL_HEADER`] is protocol 1.

/// The protocol this build speaks.
pub const PROTOCOL: u32 = 2;
/// The oldest protocol of a client (party daemon, operator CLI) this coordinator serves.
pub const OLDEST_CLIENT: u32 = 1;
/// The oldest coordinator protocol this build's clients work with.
pub const OLDEST_COORDINATOR: u32 = 1;
/// Metadata: the sender's protocol, decimal.
pub const PROTOCOL_HEADER: &str = "x-yosegi-protocol";
/// Metadata: the sender's release (free text, for people: `0.2.0`, `python-party 1.3`).
pub const RELEASE_HEADER: &str = "x-yosegi-release";
/// This build's release.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");
/// What `--version` prints (the numbers written out: `concat!` takes literals only; a test
/// checks they are the constants).
pub const DESCRIPTION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (Yosegi protocol 2; a coordinator serves clients of protocols 1 to 2, a client works with coordinators of protocols 1 to 2)"
);

/// How a refusal for protocol skew starts (`FAILED_PRECONDITION`): clients stop on it instead
/// of retrying.
pub const SKEW: &str = "protocol skew: ";

/// A peer's release when it named none.
const NOT_GIVEN: &str = "not given";

/// The first release of each protocol.
const FIRST_RELEASE: [(u32, &str); 2] = [(1, "0.1.0"), (2, "0.2.0")];

fn first_release(protocol: u32) -> &'static str {
    FIRST_RELEASE
        .iter()
        .find(|(p, _)| *p == protocol)
        .map_or(RELEASE, |(_, r)| r)
}

/// What the other side says it speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its protocol.
    pub protocol: u32,
    /// Its release, as it says (`0.1.0` for protocol 1 when it says nothing).
    pub release: String,
}

impl Peer {
    /// This build.
    pub fn this() -> Self {
        Self {
            protocol: PROTOCOL,
            release: RELEASE.to_string(),
        }
    }

    /// From the two metadata values, either of which may be absent; a protocol that is not a
    /// number is named.
    pub fn from_values(protocol: Option<&str>, release: Option<&str>) -> Result<Self, String> {
        let protocol = match protocol {
            None => 1,
            Some(v) => v.trim().parse().map_err(|_| {
                format!("metadata {PROTOCOL_HEADER} is {v:?}, not a protocol number")
            })?,
        };
        // Free text from an unauthenticated caller, bound for logs and metrics labels: at most
        // 64 printable ASCII characters, anything else `?`.
        let release = match release {
            Some(r) if !r.trim().is_empty() => r
                .trim()
                .chars()
                .take(64)
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .collect(),
            _ if protocol == 1 => "0.1.0".to_string(),
            _ => NOT_GIVEN.to_string(),
        };
        Ok(Self { protocol, release })
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "protocol {} (release {})", self.protocol, self.release)
    }
}

/// Whether this coordinator serves `client` (named `who`, e.g. `caller plant-a`); the refusal
/// names both versions and what to upgrade.
pub fn serve_client(client: &Peer, who: &str) -> Result<(), String> {
    if client.protocol < OLDEST_CLIENT {
        return Err(format!(
            "{SKEW}{who} speaks Yosegi {client}; this coordinator (release {RELEASE}) serves protocols {OLDEST_CLIENT} to {PROTOCOL}: upgrade {who} to release {} or later",
            first_release(OLDEST_CLIENT)
        ));
    }
    if client.protocol > PROTOCOL {
        let upgrade = if client.release == NOT_GIVEN {
            format!("a release serving protocol {}", client.protocol)
        } else {
            format!("release {} or later", client.release)
        };
        return Err(format!(
            "{SKEW}{who} speaks Yosegi {client}, newer than this coordinator (release {RELEASE}, protocols {OLDEST_CLIENT} to {PROTOCOL}): upgrade the coordinator to {upgrade} first"
        ));
    }
    Ok(())
}

/// Whether this build's client works with `coordinator`. A newer coordinator decides for
/// itself (it refuses clients older than it serves), so only an older one is checked here.
pub fn use_coordinator(coordinator: &Peer) -> Result<(), String> {
    if coordinator.protocol < OLDEST_COORDINATOR {
        return Err(format!(
            "{SKEW}the coordinator speaks Yosegi {coordinator}; this client (release {RELEASE}) works with protocols {OLDEST_COORDINATOR} to {PROTOCOL}: upgrade the coordinator to release {} or later",
            first_release(OLDEST_COORDINATOR)
        ));
    }
    Ok(())
}

/// Adds this build's protocol and release to a call's metadata.
pub fn announce(md: &mut tonic::metadata::MetadataMap) {
    md.insert(
        PROTOCOL_HEADER,
        tonic::metadata::MetadataValue::from(PROTOCOL),
    );
    md.insert(
        RELEASE_HEADER,
        tonic::metadata::MetadataValue::from_static(RELEASE),
    );
}

/// The coordinator an answer came from, if this build's client works with it; else the
/// refusal (starting [`SKEW`]).
pub fn coordinator_of(md: &tonic::metadata::MetadataMap) -> Result<Peer, String> {
    let text = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
    let peer = Peer::from_values(text(PROTOCOL_HEADER), text(RELEASE_HEADER))
        .map_err(|e| format!("{SKEW}the coordinator's answer: {e}"))?;
    use_coordinator(&peer)?;
    Ok(peer)
}

/// Whether a refusal is for protocol skew (no retry can help).
pub fn is_skew(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition && status.message().starts_with(SKEW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_without_the_header_is_the_first_release() {
        let p = Peer::from_values(None, None).unwrap();
        assert_eq!((p.protocol, p.release.as_str()), (1, "0.1.0"));
        assert!(serve_client(&p, "party plant-a").is_ok());
        assert!(use_coordinator(&p).is_ok());
    }

    #[test]
    fn a_newer_client_is_refused_naming_both_versions_and_the_upgrade() {
        let p = Peer::from_values(Some("3"), Some("0.3.0")).unwrap();
        let e = serve_client(&p, "party plant-a").unwrap_err();
        assert!(e.starts_with(SKEW), "{e}");
        for part in [
            "party plant-a speaks Yosegi protocol 3 (release 0.3.0)",
            &format!("release {RELEASE}, protocols {OLDEST_CLIENT} to {PROTOCOL}"),
            "upgrade the coordinator to release 0.3.0 or later",
        ] {
            assert!(e.contains(part), "{e:?} lacks {part:?}");
        }
    }

    #[test]
    fn an_older_client_than_served_is_told_which_release_to_take() {
        let p = Peer::from_values(Some("0"), Some("0.0.9")).unwrap();
        let e = serve_client(&p, "operator ops").unwrap_err();
        assert!(
            e.contains("operator ops speaks Yosegi protocol 0 (release 0.0.9)")
                && e.contains("upgrade operator ops to release 0.1.0 or later"),
            "{e}"
        );
        assert!(
            use_coordinator(&p)
                .unwrap_err()
                .contains("upgrade the coordinator")
        );
    }

    #[test]
    fn what_a_call_announces_is_what_a_coordinator_reads() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(
            coordinator_of(&md).unwrap().protocol,
            1,
            "no header: the first release"
        );
        announce(&mut md);
        assert_eq!(coordinator_of(&md).unwrap(), Peer::this());
        let refused = tonic::Status::failed_precondition(
            serve_client(&Peer::from_values(Some("9"), None).unwrap(), "party p").unwrap_err(),
        );
        assert!(is_skew(&refused));
        assert!(!is_skew(&tonic::Status::failed_precondition(
            "round closed"
        )));
    }

    #[test]
    fn the_version_text_states_the_constants() {
        assert_eq!(
            DESCRIPTION,
            format!(
                "{RELEASE} (Yosegi protocol {PROTOCOL}; a coordinator serves clients of protocols {OLDEST_CLIENT} to {PROTOCOL}, a client works with coordinators of protocols {OLDEST_COORDINATOR} to {PROTOCOL})"
            )
        );
    }

    #[test]
    fn a_release_is_bounded_printable_text() {
        let long = "x".repeat(500);
        assert_eq!(
            Peer::from_values(Some("2"), Some(&long))
                .unwrap()
                .release
                .len(),
            64
        );
        let p = Peer::from_values(Some("2"), Some("0.2\n\u{1b}[31m é")).unwrap();
        assert_eq!(p.release, "0.2??[31m ?");
    }

    #[test]
    fn a_protocol_that_is_not_a_number_is_named() {
        let e = Peer::from_values(Some("two"), None).unwrap_err();
        assert!(e.contains("x-yosegi-protocol is \"two\""), "{e}");
    }
}
