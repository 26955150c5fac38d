//! Slack's mrkdwn to herald's Markdown (or to plain text, for titles): `*bold*`, `_italic_`,
//! `~strike~`, `<url|label>` links, `<@U…>`/`<#C…>` references, `<!here>`-style broadcasts and
//! `&amp;` escapes. Code spans and links are set aside first so nothing inside them is touched;
//! Markdown that Mattermost senders already write (`**bold**`, `[l](u)`) passes through.

/// What the conversion produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Markdown,
    Plain,
}

/// Converts mrkdwn; `at_all` is set when the text broadcasts (`<!here>`, `<!channel>`).
pub struct Converter {
    style: Style,
    pub at_all: bool,
    held: Vec<String>,
}

/// Marks a set-aside piece in the text being converted (private-use characters).
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

impl Converter {
    pub fn new(style: Style) -> Converter {
        Converter {
            style,
            at_all: false,
            held: Vec::new(),
        }
    }

    /// Converts one mrkdwn string.
    pub fn convert(&mut self, src: &str) -> String {
        self.held.clear();
        let clean: String = src.chars().filter(|c| *c != OPEN && *c != CLOSE).collect();
        let protected = self.protect(&clean);
        let (bold, italic, strike) = match self.style {
            Style::Markdown => ("**", "*", "~~"),
            Style::Plain => ("", "", ""),
        };
        let text = emphasis(&protected, '*', bold);
        let text = emphasis(&text, '_', italic);
        let text = emphasis(&text, '~', strike);
        unescape(&self.restore(&text)).trim().to_string()
    }

    /// Replaces code and `<…>` tokens with placeholders, holding their converted text.
    fn protect(&mut self, src: &str) -> String {
        let mut out = String::with_capacity(src.len());
        let mut rest = src;
        while let Some(c) = rest.chars().next() {
            let taken = match c {
                '`' => self.code(rest),
                '<' => self.angle(rest),
                _ => None,
            };
            match taken {
                Some(len) => rest = &rest[len..],
                None => {
                    out.push(c);
                    rest = &rest[c.len_utf8()..];
                    continue;
                }
            }
            out.push(OPEN);
            out.push_str(&(self.held.len() - 1).to_string());
            out.push(CLOSE);
        }
        out
    }

    /// A code block or span at the start of `s`: holds it and returns its length.
    fn code(&mut self, s: &str) -> Option<usize> {
        if let Some(body) = s.strip_prefix("```") {
            let end = body.find("```")?;
            let inner = body[..end].trim_matches('\n');
            self.held.push(match self.style {
                Style::Markdown => format!("\n```\n{inner}\n```\n"),
                Style::Plain => inner.to_string(),
            });
            return Some(end + 6);
        }
        let end = s[1..].find(['`', '\n'])? + 1;
        if !s[end..].starts_with('`') || end == 1 {
            return None;
        }
        let inner = &s[1..end];
        self.held.push(match self.style {
            Style::Markdown => format!("`{inner}`"),
            Style::Plain => inner.to_string(),
        });
        Some(end + 1)
    }

    /// A `<…>` token at the start of `s`: holds its readable form and returns its length.
    fn angle(&mut self, s: &str) -> Option<usize> {
        let end = s.find(['>', '\n'])?;
        if !s[end..].starts_with('>') || end == 1 {
            return None;
        }
        let inner = &s[1..end];
        let (target, label) = match inner.split_once('|') {
            Some((t, l)) => (t, Some(l)),
            None => (inner, None),
        };
        let shown = self.reference(target, label);
        self.held.push(shown);
        Some(end + 1)
    }

    fn reference(&mut self, target: &str, label: Option<&str>) -> String {
        let label = label.map(str::trim).filter(|l| !l.is_empty());
        if let Some(id) = target.strip_prefix('@') {
            return format!("@{}", label.unwrap_or(id).trim_start_matches('@'));
        }
        if let Some(id) = target.strip_prefix('#') {
            return format!("#{}", label.unwrap_or(id).trim_start_matches('#'));
        }
        if let Some(special) = target.strip_prefix('!') {
            return self.special(special, label);
        }
        self.link(target, label)
    }

    /// `<!here>`, `<!channel>`, `<!everyone>` broadcast; `<!subteam^…|@team>`, `<!date^…|text>`.
    fn special(&mut self, special: &str, label: Option<&str>) -> String {
        let word = special.split('^').next().unwrap_or_default();
        match word {
            "here" | "channel" | "everyone" => {
                self.at_all = true;
                format!("@{word}")
            }
            "subteam" => label.map_or("@team".into(), |l| {
                format!("@{}", l.trim_start_matches('@'))
            }),
            _ => label.unwrap_or(word).to_string(),
        }
    }

    /// A link: Markdown `[label](url)` for web and mail links; any other scheme shows its
    /// label only.
    fn link(&self, url: &str, label: Option<&str>) -> String {
        let lower = url.to_ascii_lowercase();
        let safe = ["http://", "https://", "mailto:"]
            .iter()
            .any(|p| lower.starts_with(p));
        match (safe, label, self.style) {
            (true, Some(l), Style::Markdown) => {
                format!(
                    "[{}]({})",
                    l.replace('[', "(").replace(']', ")"),
                    url.replace(' ', "%20")
                )
            }
            (_, Some(l), _) => l.to_string(),
            (true, None, _) => url.trim_start_matches("mailto:").to_string(),
            (false, None, _) => String::new(),
        }
    }

    /// Puts the held pieces back in place of their placeholders.
    fn restore(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(OPEN) {
            out.push_str(&rest[..start]);
            let after = &rest[start + OPEN.len_utf8()..];
            let end = after.find(CLOSE).unwrap_or(after.len());
            let piece = after[..end]
                .parse::<usize>()
                .ok()
                .and_then(|i| self.held.get(i));
            out.push_str(piece.map(String::as_str).unwrap_or_default());
            rest = after.get(end + CLOSE.len_utf8()..).unwrap_or_default();
        }
        out.push_str(rest);
        out
    }
}

/// Rewrites `marker`-delimited spans (Slack's rules: the marker opens after a non-word
/// character and before a non-space, closes after a non-space and before a non-word
/// character, on one line) with `with` on both sides.
fn emphasis(text: &str, marker: char, with: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        match (chars[i] == marker && opens(&chars, i, marker))
            .then(|| closing(&chars, i, marker))
            .flatten()
        {
            Some(j) => {
                out.push_str(with);
                out.extend(&chars[i + 1..j]);
                out.push_str(with);
                i = j + 1;
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

fn opens(chars: &[char], i: usize, marker: char) -> bool {
    let before = i.checked_sub(1).map(|p| chars[p]);
    let after = chars.get(i + 1).copied();
    before.is_none_or(|b| !b.is_alphanumeric() && b != marker)
        && after.is_some_and(|a| !a.is_whitespace() && a != marker)
}

fn closing(chars: &[char], i: usize, marker: char) -> Option<usize> {
    (i + 2..chars.len())
        .take_while(|&j| chars[j] != '\n')
        .find(|&j| {
            chars[j] == marker
                && !chars[j - 1].is_whitespace()
                && chars
                    .get(j + 1)
                    .is_none_or(|n| !n.is_alphanumeric() && *n != marker)
        })
}

/// Slack escapes exactly these three.
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(s: &str) -> String {
        Converter::new(Style::Markdown).convert(s)
    }

    #[test]
    fn emphasis_becomes_markdown() {
        assert_eq!(md("*bold* _it_ ~gone~"), "**bold** *it* ~~gone~~");
        assert_eq!(md("a *bold move* here"), "a **bold move** here");
        assert_eq!(
            md("snake_case_name and 2 * 3 * 4"),
            "snake_case_name and 2 * 3 * 4"
        );
        assert_eq!(md("**already** markdown"), "**already** markdown");
        assert_eq!(md("*_both_*"), "***both***");
    }

    #[test]
    fn links_and_references_become_readable() {
        assert_eq!(
            md("see <https://x.io/a_b_c|the *docs*> or <https://y.io>"),
            "see [the *docs*](https://x.io/a_b_c) or https://y.io"
        );
        assert_eq!(md("<@U123> <@U9|ann> in <#C1|ops>"), "@U123 @ann in #ops");
        assert_eq!(md("<javascript:alert(1)|click>"), "click");
        assert_eq!(md("a &lt;b&gt; &amp; c"), "a <b> & c");
    }

    #[test]
    fn broadcasts_mention_everyone() {
        let mut c = Converter::new(Style::Markdown);
        assert_eq!(c.convert("<!here> deploy done"), "@here deploy done");
        assert!(c.at_all);
        assert_eq!(
            md("<!subteam^S1|@oncall> <!date^1|Feb 18>"),
            "@oncall Feb 18"
        );
    }

    #[test]
    fn code_is_left_alone() {
        assert_eq!(md("run `rm *.tmp_x*` now"), "run `rm *.tmp_x*` now");
        assert_eq!(md("```let *x* = 1;```"), "```\nlet *x* = 1;\n```");
        assert_eq!(md("a ` b * c"), "a ` b * c");
    }

    #[test]
    fn plain_drops_markup() {
        let mut c = Converter::new(Style::Plain);
        assert_eq!(
            c.convert("*Deploy* of <https://x|api> ~failed~"),
            "Deploy of api failed"
        );
    }

    #[test]
    fn broken_input_survives() {
        for s in [
            "<",
            "<>",
            "`",
            "```",
            "*",
            "_*~",
            "<@",
            "\u{E000}1\u{E001}",
            "<|>",
            "<!^|>",
        ] {
            let _ = md(s);
        }
    }
}
