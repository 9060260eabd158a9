//! The other unix user of the attacker tests, shared by the test crates that run as root.

/// `setpriv` arguments that run the command after them as nobody (uid and gid 65534, no
/// supplementary groups).
pub const AS_NOBODY: [&str; 7] = [
    "setpriv",
    "--reuid",
    "65534",
    "--regid",
    "65534",
    "--clear-groups",
    "--",
];
