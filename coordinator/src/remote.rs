//! Where the operator commands find the coordinator and the operator key, and how they
//! connect (pinned TLS, optional client certificate, the signed operator client).

use std::path::PathBuf;

use crate::grpc::client::{OperatorClient, operator_key};

/// Where the operator commands find the coordinator and the operator key.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The coordinator's URL (https://; http:// only for a server run with --plaintext).
    #[arg(long, env = "YOSEGI_SERVER", default_value = "https://127.0.0.1:50051")]
    pub server: String,
    /// The coordinator's CA certificate, pinned for https:// (written by `coordinator init`).
    #[arg(long, env = "YOSEGI_CA", default_value = "coordinator-data/tls/ca.pem")]
    pub ca: PathBuf,
    /// Client certificate for a coordinator that requires mutual TLS (with --tls-key).
    #[arg(long, env = "YOSEGI_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client certificate's private key (mode 0600).
    #[arg(long, env = "YOSEGI_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The operator's private key (written by `coordinator init` into the data dir).
    #[arg(
        long,
        env = "YOSEGI_OPERATOR_KEY",
        default_value = "coordinator-data/operator.key.pem"
    )]
    pub operator_key: PathBuf,
    /// The operator the key belongs to (`operator` is the one `coordinator init` made).
    #[arg(long, env = "YOSEGI_OPERATOR_NAME", default_value = "operator")]
    pub operator_name: String,
}

/// Opens the signed operator client `remote` names.
pub async fn connect(remote: &Remote) -> anyhow::Result<OperatorClient> {
    let key = operator_key(&remote.operator_key)?;
    let tls = crate::tls::ClientTls {
        ca: Some(remote.ca.clone()),
        identity: remote.tls_cert.clone().zip(remote.tls_key.clone()),
    };
    OperatorClient::connect_with(&remote.server, &tls, key)
        .await?
        .named(&remote.operator_name)
}
