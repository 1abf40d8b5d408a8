//! `hearth token`.

use std::path::Path;

pub(crate) fn run(data_dir: &Path) -> anyhow::Result<()> {
    println!("{}", crate::paths::read_token(data_dir)?);
    Ok(())
}
