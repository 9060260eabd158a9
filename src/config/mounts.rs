//! How a Dockerfile may mount an id: `mode`, `uid`, `gid`, `targets` and `mount_required` on
//! `[secrets.<id>]` and `[ssh.<id>]`, the `[mounts.secrets]` / `[mounts.ssh]` defaults for keys
//! an id does not set, and `[server] dockerfile_unseen`. Checked at build time against the
//! Dockerfile the daemon reads (`session::dockerfile_watch`) and by `buildbroker check`.
//! Like the rest of `config`, nothing here reads a Dockerfile.

use serde::Deserialize;
use toml::Spanned;

use super::Collector;

/// The mount rules of one id (or the defaults of one kind); `None` where nothing is said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountRules {
    /// The widest file mode a mount may ask for.
    pub mode: Option<u32>,
    /// The only uid the mounted file may belong to.
    pub uid: Option<u32>,
    /// The only gid the mounted file may belong to.
    pub gid: Option<u32>,
    /// The paths a mount may use (`target=`, or the default path); `env:NAME` allows a secret
    /// mounted as that environment variable.
    pub targets: Option<Vec<String>>,
    /// Mounts must say `required=true`, so a missing value fails the build instead of
    /// skipping the mount.
    pub mount_required: Option<bool>,
}

/// `[mounts]`: rules for every id of a kind, where the id's own table does not set the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountDefaults {
    pub secrets: MountRules,
    pub ssh: MountRules,
}

/// `[server] dockerfile_unseen`: what a secret or ssh request means when buildbroker did not
/// see the build's Dockerfile (a remote git or https context, a Dockerfile the daemon already
/// held from an earlier build and did not fetch again, one too large or unreadable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DockerfileUnseen {
    /// Serve as if no mount rule applied (audited as `unseen_allowed`).
    #[default]
    Allow,
    /// Refuse every id that has mount rules.
    Deny,
}

/// The mount keys as they appear in any of the three tables.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMountRules {
    pub mode: Option<Spanned<u32>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub targets: Option<Vec<Spanned<String>>>,
    pub mount_required: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMounts {
    #[serde(default)]
    pub secrets: RawMountRules,
    #[serde(default)]
    pub ssh: RawMountRules,
}

/// Checks the mount keys of `table` (`[secrets.x]`, `[mounts.ssh]`, …).
pub(super) fn check(
    table: &str,
    mode: Option<&Spanned<u32>>,
    uid: Option<u32>,
    gid: Option<u32>,
    targets: Option<&Vec<Spanned<String>>>,
    mount_required: Option<bool>,
    c: &mut Collector<'_>,
) -> MountRules {
    if let Some(m) = mode
        && *m.get_ref() > 0o777
    {
        c.push(
            m.span(),
            format!(
                "{table} mode: expected permission bits no wider than 0o777; got {:#o}",
                m.get_ref()
            ),
        );
    }
    let targets = targets.map(|list| {
        list.iter()
            .filter_map(|t| {
                let v = t.get_ref();
                if v.starts_with('/') || v.strip_prefix("env:").is_some_and(|n| !n.is_empty()) {
                    Some(v.clone())
                } else {
                    c.push(
                        t.span(),
                        format!("{table} targets: expected an absolute path such as \"/run/secrets/token\" or \"env:NAME\"; got {v:?}"),
                    );
                    None
                }
            })
            .collect()
    });
    MountRules {
        mode: mode.map(|m| *m.get_ref()),
        uid,
        gid,
        targets,
        mount_required,
    }
}

impl RawMountRules {
    pub(super) fn check(&self, table: &str, c: &mut Collector<'_>) -> MountRules {
        check(
            table,
            self.mode.as_ref(),
            self.uid,
            self.gid,
            self.targets.as_ref(),
            self.mount_required,
            c,
        )
    }
}
