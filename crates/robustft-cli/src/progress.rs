//! Progress bars and diagnostic lines on stderr. A bar draws only on a terminal; every stage
//! message and warning goes through [`print_line`], which prints it above a drawn bar or, when
//! stderr is not a terminal (a log file, CI, `nohup`) or no bar is drawn yet, as a plain line.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar in the house style counting `unit` (`steps`, `classes`), with a message slot;
/// `length` `None` keeps it hidden until [`show`] is called.
pub fn bar(length: Option<u64>, unit: &str) -> ProgressBar {
    let bar = match length {
        Some(length) => ProgressBar::new(length),
        None => ProgressBar::hidden(),
    };
    let template = format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{msg}}  ETA {{eta}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
    bar
}

/// Starts drawing a hidden bar on stderr (a terminal only) with its length.
pub fn show(bar: &ProgressBar, length: u64) {
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_length(length);
}

/// Prints `line` on stderr whether or not the bar is drawn (indicatif's own `println` drops
/// lines while the bar is hidden).
pub fn print_line(bar: &ProgressBar, line: &str) {
    bar.suspend(|| eprintln!("{line}"));
}
