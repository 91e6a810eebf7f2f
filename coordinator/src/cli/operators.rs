//! `coordinator operator …`: operator keys and their roles.

use std::path::PathBuf;

use super::args::OperatorCommand;
use crate::remote::connect;

pub(super) fn command(
    cmd: OperatorCommand,
    runtime: fn() -> anyhow::Result<tokio::runtime::Runtime>,
) -> anyhow::Result<()> {
    match cmd {
        OperatorCommand::Keygen { out } => {
            let with = |ext: &str| {
                let mut name = out.clone().into_os_string();
                name.push(ext);
                PathBuf::from(name)
            };
            let (private, public) = (with(".key.pem"), with(".pub.pem"));
            let key = shared_model::keys::generate()?;
            shared_model::keys::write_private(&private, &key)?;
            shared_model::keys::write_public(&public, &key.verifying_key())?;
            println!(
                "operator key {} in {} (keep it), public key in {} (give it to an admin)",
                shared_model::keys::fingerprint(&key.verifying_key()),
                private.display(),
                public.display()
            );
        }
        OperatorCommand::Add {
            name,
            role,
            public_key,
            remote,
        } => runtime()?.block_on(async {
            let key = shared_model::keys::read_public(&public_key)?;
            let fp = connect(&remote)
                .await?
                .add_operator(&name, &key, role)
                .await?;
            println!("added operator {name} with role {role} (key {fp})");
            anyhow::Ok(())
        })?,
        OperatorCommand::Revoke { name, remote } => runtime()?.block_on(async {
            connect(&remote).await?.revoke_operator(&name).await?;
            println!("revoked operator {name}: its calls are refused from now on");
            anyhow::Ok(())
        })?,
        OperatorCommand::List { remote, json } => runtime()?.block_on(async {
            let operators = connect(&remote).await?.operators().await?;
            if json {
                let rows: Vec<_> = operators
                    .iter()
                    .map(|o| {
                        serde_json::json!({
                            "name": o.name, "role": o.role,
                            "fingerprint": o.fingerprint, "revoked": o.revoked,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for o in operators {
                    let state = if o.revoked { "revoked" } else { "active" };
                    println!("{:<16} {:<8} {}  {state}", o.name, o.role, o.fingerprint);
                }
            }
            anyhow::Ok(())
        })?,
        OperatorCommand::Recover {
            data_dir,
            name,
            public_key,
            revoke,
        } => {
            anyhow::ensure!(
                name.is_some() || !revoke.is_empty(),
                "nothing to recover: give --name and --public-key of a new admin, or --revoke NAME"
            );
            let key = public_key
                .map(|p| shared_model::keys::read_public(&p))
                .transpose()?;
            let admin = name.as_deref().zip(key.as_ref());
            let done = crate::recover::recover(&data_dir, admin, &revoke, crate::state::now_ms())?;
            if let Some(a) = done.added {
                println!("added admin {a}");
            }
            for r in done.revoked {
                println!("revoked operator {r}");
            }
        }
    }
    Ok(())
}
