//! Plain aligned tables for the CLI's human output (`latest`, `registry list`): comfy-table
//! without borders, never wrapped, numbers right-aligned. Cells come from the registry and
//! the store (operator or device input): control characters are shown as U+FFFD so a name
//! cannot move the cursor or forge a line.

use comfy_table::{CellAlignment, ContentArrangement, Table, presets};

/// Column alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table with these headers and alignments.
pub fn new(columns: &[(&str, Align)]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(columns.iter().map(|(h, _)| *h));
    for (i, (_, align)) in columns.iter().enumerate() {
        if let Some(col) = t.column_mut(i) {
            // Two spaces between columns, none before the first.
            col.set_padding((0, 2));
            col.set_cell_alignment(match align {
                Align::Left => CellAlignment::Left,
                Align::Right => CellAlignment::Right,
            });
        }
    }
    t
}

/// The table as text, without trailing blanks.
pub fn render(t: &Table) -> String {
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cell's text with control characters replaced.
pub fn cell(text: impl std::fmt::Display) -> String {
    text.to_string()
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_control_characters_are_neutralised() {
        let mut t = new(&[("name", Align::Left), ("value", Align::Right)]);
        t.add_row(vec![cell("a"), cell(1.5)]);
        t.add_row(vec![cell("longer\nname\x1b[2J"), cell(12345)]);
        let text = render(&t);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(
            widths.iter().all(|w| *w == widths[0]),
            "right column ends aligned: {text:?}"
        );
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(text.contains("longer\u{FFFD}name"), "{text:?}");
    }
}
