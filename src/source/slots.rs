//! A cap on concurrent fetches per slow source kind (`[limits] source_fetches`): a build that
//! asks for hundreds of `exec:` ids at once, or a burst of sessions on a slow Secrets Manager,
//! must not fork hundreds of programs or open hundreds of calls. Fetches over the cap wait for
//! a slot; each slow kind has its own budget, so a hung keyring never delays `aws-sm:` (and `aws-credentials:` has its own budget for STS). Fast
//! local kinds (`env`, `file`, `client`) take no slot.

use tokio::sync::{Semaphore, SemaphorePermit};

use super::SourceSpec;

/// One semaphore per slow source kind.
pub struct FetchSlots {
    exec: Semaphore,
    aws_sm: Semaphore,
    aws_sts: Semaphore,
    keyring: Semaphore,
}

impl FetchSlots {
    pub fn new(per_kind: usize) -> Self {
        let per_kind = per_kind.max(1);
        FetchSlots {
            exec: Semaphore::new(per_kind),
            aws_sm: Semaphore::new(per_kind),
            aws_sts: Semaphore::new(per_kind),
            keyring: Semaphore::new(per_kind),
        }
    }

    /// Waits for a slot for a fetch from `spec`; `None` for kinds that need none. The slot is
    /// held until the returned permit is dropped.
    pub async fn acquire(&self, spec: &SourceSpec) -> Option<SemaphorePermit<'_>> {
        let semaphore = match spec {
            SourceSpec::Exec(_) => &self.exec,
            SourceSpec::AwsSm(_) => &self.aws_sm,
            SourceSpec::AwsCredentials(_) => &self.aws_sts,
            SourceSpec::Keyring(_) => &self.keyring,
            SourceSpec::Env(_)
            | SourceSpec::File(_)
            | SourceSpec::Client
            | SourceSpec::ClientEnv(_) => return None,
        };
        // The semaphores are never closed, so acquire cannot fail.
        semaphore.acquire().await.ok()
    }
}

impl Default for FetchSlots {
    fn default() -> Self {
        FetchSlots::new(super::SourceSettings::default().fetches_per_kind)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn at_most_n_fetches_of_one_kind_run_at_once_and_kinds_do_not_share() {
        let slots = Arc::new(FetchSlots::new(3));
        let exec = SourceSpec::parse("exec:/bin/true", None).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (slots, exec, running, peak) =
                (slots.clone(), exec.clone(), running.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire(&exec).await.expect("exec takes a slot");
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        // While exec is saturated, another kind still gets a slot at once.
        let keyring = SourceSpec::parse("keyring:svc/acct", None).unwrap();
        let _keyring_slot = tokio::time::timeout(Duration::from_millis(5), slots.acquire(&keyring))
            .await
            .expect("keyring is not queued behind exec")
            .expect("keyring takes a slot");
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        let env = SourceSpec::parse("env:X", None).unwrap();
        assert!(slots.acquire(&env).await.is_none(), "env takes no slot");
    }
}
