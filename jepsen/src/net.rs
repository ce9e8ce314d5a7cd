//! Network partitions between members, as iptables rules that drop packets between member
//! addresses on loopback.
//!
//! Invariants:
//! - every rule lives in one chain of this process's own, `KEEL-JEPSEN-<pid>`, jumped to from
//!   INPUT; healing flushes the chain, and `Firewall::remove` (also run on drop) unhooks and
//!   deletes it, so nothing is left behind;
//! - chains left by a run that was SIGKILLed (its pid no longer alive) are removed when the next
//!   run starts; chains of live runs are never touched;
//! - rules match source *and* destination member addresses, so only member-to-member traffic is
//!   cut: clients (from 127.0.0.1) still reach every member, as in Jepsen's own setups.

use std::net::IpAddr;
use std::process::Command;

use crate::JepsenError;

const CHAIN_PREFIX: &str = "KEEL-JEPSEN-";

/// This run's firewall chain.
#[derive(Debug)]
pub struct Firewall {
    chain: String,
    /// True while the chain exists and is hooked into INPUT.
    installed: bool,
}

fn iptables(args: &[&str]) -> Result<String, JepsenError> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|err| JepsenError::Fault(format!("running iptables (is it installed?): {err}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(JepsenError::Fault(format!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

impl Firewall {
    /// Removes chains of dead runs, then creates and hooks this run's (empty) chain.
    pub fn install() -> Result<Self, JepsenError> {
        sweep_stale_chains()?;
        let chain = format!("{CHAIN_PREFIX}{}", std::process::id());
        iptables(&["-N", &chain])?;
        let mut firewall = Self { chain, installed: true };
        if let Err(err) = iptables(&["-I", "INPUT", "-j", &firewall.chain]) {
            firewall.remove();
            return Err(err);
        }
        Ok(firewall)
    }

    /// Drops traffic in both directions between each pair in `cut`, replacing any earlier
    /// partition.
    pub fn partition(&self, cut: &[(IpAddr, IpAddr)]) -> Result<(), JepsenError> {
        self.heal()?;
        for (a, b) in cut {
            self.drop_between(*a, *b)?;
            self.drop_between(*b, *a)?;
        }
        Ok(())
    }

    /// Drops packets from `from` to `to` (one direction).
    pub fn drop_between(&self, from: IpAddr, to: IpAddr) -> Result<(), JepsenError> {
        iptables(&["-A", &self.chain, "-s", &from.to_string(), "-d", &to.to_string(), "-j", "DROP"]).map(|_| ())
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) -> Result<(), JepsenError> {
        iptables(&["-F", &self.chain]).map(|_| ())
    }

    /// Unhooks and deletes the chain; errors are logged, since this also runs on the way out.
    pub fn remove(&mut self) {
        if !self.installed {
            return;
        }
        for args in [vec!["-D", "INPUT", "-j", &self.chain], vec!["-F", &self.chain], vec!["-X", &self.chain]] {
            if let Err(err) = iptables(&args) {
                tracing::warn!(%err, "removing the firewall chain");
            }
        }
        self.installed = false;
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Deletes `KEEL-JEPSEN-<pid>` chains whose process is gone.
fn sweep_stale_chains() -> Result<(), JepsenError> {
    let rules = iptables(&["-S"])?;
    for line in rules.lines() {
        let Some(chain) = line.strip_prefix("-N ") else { continue };
        let Some(pid) = chain.strip_prefix(CHAIN_PREFIX) else { continue };
        let alive = pid.parse::<u32>().is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            tracing::info!(chain, "removing a firewall chain left by an earlier run");
            let mut stale = Firewall { chain: chain.to_string(), installed: true };
            stale.remove();
        }
    }
    Ok(())
}
