//! SIGHUP: read the config file and the keyring again.
//!
//! What applies without a restart: the admin tokens (rotation) and the keyring's
//! blacklist (tickets under a newly blacklisted key are refused at open and not issued).
//! Every other setting is read and validated, and a changed one is logged as needing a
//! restart. A reload that fails changes nothing and is counted.

use crate::shard::NodeShared;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static RELOADS_OK: AtomicU64 = AtomicU64::new(0);
static RELOADS_FAILED: AtomicU64 = AtomicU64::new(0);

/// Reloads; logs and counts the outcome.
pub fn reload(node: &NodeShared) {
    match try_reload(node) {
        Ok(summary) => {
            RELOADS_OK.fetch_add(1, Relaxed);
            log::info!("SIGHUP: reloaded ({summary})");
        }
        Err(e) => {
            RELOADS_FAILED.fetch_add(1, Relaxed);
            log::error!("SIGHUP: reload failed, nothing changed: {e:#}");
        }
    }
}

fn try_reload(node: &NodeShared) -> anyhow::Result<String> {
    use anyhow::Context;
    let mut config = node.config.clone();
    if let Some(path) = &node.config.config_file {
        let mut fresh = crate::config::Config::from_file(path)?;
        fresh.validate()?;
        // The data dir was made absolute at start; the file may name it relatively.
        fresh.data_dir = node.config.data_dir.clone();
        config = fresh;
    }
    let (current, previous) = crate::node::load_admin_tokens(&config)?;
    let keyring_path = match &config.keyring {
        Some(k) => Some(k.clone()),
        None if node.rain.is_some() => Some(crate::rain::event::demo_paths(&config.data_dir).1),
        None => None,
    };
    let blacklist = match &keyring_path {
        Some(path) => Some(
            crate::tickets::keyring::Keyring::load(path)
                .with_context(|| format!("reading the keyring {}", path.display()))?
                .blacklist,
        ),
        None => None,
    };
    // Everything read and valid: apply.
    node.admin_tokens.replace(current, previous);
    let mut summary = String::from("admin tokens");
    if let Some(keys) = blacklist {
        let _ = write!(summary, ", keyring blacklist {keys:?}");
        node.switches.set_keyring_blacklist(keys, redrain_net::time::now_unix_ms());
    }
    if format!("{:?}", strip(&config)) != format!("{:?}", strip(&node.config)) {
        log::warn!("SIGHUP: other settings in the config file changed; they apply at the next restart");
    }
    Ok(summary)
}

/// The config without the fields a reload applies (for the "needs a restart" check).
fn strip(c: &crate::config::Config) -> crate::config::Config {
    crate::config::Config { admin_token_hex: None, admin_token_previous_hex: None, config_file: None, ..c.clone() }
}

pub fn render(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP redrain_reloads_total SIGHUP reloads of the config file and keyring.\n# TYPE redrain_reloads_total counter\n\
         redrain_reloads_total{{result=\"ok\"}} {}\nredrain_reloads_total{{result=\"failed\"}} {}",
        RELOADS_OK.load(Relaxed),
        RELOADS_FAILED.load(Relaxed)
    );
}
