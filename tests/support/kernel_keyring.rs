//! Kernel keyring entries made with the real `keyctl`, removed on drop.

// Shared by several test binaries; each uses the part it needs.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};

/// A user key `keyring:ACCOUNT@SERVICE` in the user keyring, as a user would add it by hand.
pub struct KernelKey {
    pub id: String,
}

impl KernelKey {
    /// `keyctl padd user keyring:ACCOUNT@SERVICE @u` with the value on stdin.
    pub fn add(service: &str, account: &str, value: &[u8]) -> KernelKey {
        let mut child = Command::new("keyctl")
            .args([
                "padd",
                "user",
                &format!("keyring:{account}@{service}"),
                "@u",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("keyctl (package keyutils) must be installed: run tests/testbed/setup.sh");
        child.stdin.take().unwrap().write_all(value).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "keyctl padd failed");
        KernelKey {
            id: String::from_utf8(out.stdout).unwrap().trim().to_string(),
        }
    }
}

impl Drop for KernelKey {
    fn drop(&mut self) {
        let _ = Command::new("keyctl")
            .args(["invalidate", &self.id])
            .status();
    }
}

/// A name no other test uses.
pub fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{label}-{}-{nanos:x}", std::process::id())
}
