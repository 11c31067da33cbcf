//! The HTML report.

use crate::report::Report;

pub fn render(report: &Report) -> String {
    format!("<pre>{}</pre>", report.summary())
}
