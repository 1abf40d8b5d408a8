//! From Winch's code to Cranelift's: a version that serves code compiled by
//! the baseline compiler has Cranelift compile it in the background, and the
//! optimized code is swapped in the way a deploy swaps versions: a new
//! routing table, requests in flight finishing on the code they started on
//! (their `Arc<Loaded>` holds it), new requests taking the new code.

use super::*;

impl Apps {
    /// Starts the background compile of `loaded`'s code if it is Winch's
    /// and none has started for it.
    pub(super) fn optimize_later(&self, name: &str, loaded: &Arc<Loaded>) {
        let code = &loaded.code;
        if code.tier != Tier::Baseline {
            return;
        }
        {
            let mut optimizing = lock(&code.optimizing);
            if *optimizing != Optimizing::Pending {
                return;
            }
            *optimizing = Optimizing::Running;
        }
        // Without a runtime the process is ending; Winch's code serves
        // until then.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let task =
            runtime.spawn(self.clone().optimize(name.to_owned(), loaded.sha256.clone(), loaded.code.clone()));
        let mut optimizes = lock(&self.inner.optimizes);
        optimizes.retain(|task| !task.is_finished());
        optimizes.push(task);
    }

    /// Compiles `sha256` with Cranelift and swaps the result in for
    /// `baseline`, if that is still what the app serves when its turn to
    /// compile comes (compiles run one at a time, and a deploy in between
    /// makes this one moot).
    async fn optimize(self, name: String, sha256: String, baseline: Arc<Code>) {
        let started = Instant::now();
        let (apps, app, sha, code) = (self.clone(), name.clone(), sha256.clone(), baseline.clone());
        let background = self.inner.runtime.in_background(move || {
            let runtime = &apps.inner.runtime;
            let wanted = || !apps.inner.stopping.load(Ordering::Relaxed) && apps.serves(&app, &code);
            let Some(_turn) = runtime.turn_if(wanted) else { return Ok(None) };
            let blob = apps.blob_path(&sha);
            let bytes = std::fs::read(&blob).map_err(|e| Error::io(&blob, e))?;
            let compiled = runtime.optimize_held(&sha, &bytes, runtime::Write::Now)?;
            let pre = runtime.prepare_optimized(&compiled)?;
            Ok::<_, Error>(Some(Arc::new(Code::new(runtime, &compiled, pre))))
        });
        let compiled = background
            .await
            .unwrap_or_else(|_| Err(Error::Internal("the compile ended early (a panic)".into())));
        let optimized = match compiled {
            Ok(Some(optimized)) => optimized,
            Ok(None) => return,
            Err(e) => {
                let why = chain(&e);
                tracing::warn!(app = name, sha256, error = %why, "Cannot compile an app with Cranelift; Winch's code keeps serving.");
                if let Some(version) = self.swap_version(&name, &baseline) {
                    self.log(&name).push(
                        version,
                        LogStream::Hearth,
                        format!("Cranelift could not compile version {version} ({why}); Winch's code keeps serving."),
                    );
                }
                *lock(&baseline.optimizing) = Optimizing::Failed(why);
                return;
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let functions = optimized.functions.unwrap_or_default();
        let swapped = {
            let mut loaded = lock(&self.inner.loaded);
            let current = loaded.get(&name).and_then(|e| e.serving.as_ref().ok()).cloned();
            let swapped = match current {
                Some(current) if Arc::ptr_eq(&current.code, &baseline) => {
                    let next = Arc::new(Loaded {
                        ctx: current.ctx.clone(),
                        code: optimized,
                        sha256: current.sha256.clone(),
                        config_seen: current.config_seen,
                    });
                    if let Some(entry) = loaded.get_mut(&name) {
                        entry.serving = Ok(next);
                    }
                    Some(current.ctx.version)
                }
                _ => None,
            };
            if swapped.is_some() {
                self.publish(&loaded);
            }
            swapped
        };
        let Some(version) = swapped else { return };
        self.log(&name).push(
            version,
            LogStream::Hearth,
            format!(
                "Serving version {version} compiled by Cranelift (in {ms:.0} ms; {} functions from the cache, {} compiled).",
                functions.hits, functions.misses
            ),
        );
        tracing::info!(
            app = name,
            version,
            ms = ms as u64,
            function_hits = functions.hits,
            function_misses = functions.misses,
            "Swapped in Cranelift's code."
        );
    }

    /// Whether `name` still serves `code`.
    fn serves(&self, name: &str, code: &Arc<Code>) -> bool {
        self.swap_version(name, code).is_some()
    }

    /// The version `name` serves, if it serves it with `code`.
    fn swap_version(&self, name: &str, code: &Arc<Code>) -> Option<u32> {
        let loaded = lock(&self.inner.loaded);
        let serving = loaded.get(name)?.serving.as_ref().ok()?;
        Arc::ptr_eq(&serving.code, code).then_some(serving.ctx.version)
    }
}
