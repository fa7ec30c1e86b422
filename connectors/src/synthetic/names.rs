//! How synthetic articles are named: the section name of a topic cluster, and the id of a
//! breaking-news spike's article (`<portal>/<topic>/urgente-<number>`). Both the catalogue and
//! the spike plan of the configuration need them.

use super::json::write_decimal;

/// Section names for topic clusters (suffixed when there are more topics than names).
pub(super) const TOPIC_NAMES: [&str; 40] = [
    "politica",
    "economia",
    "mundo",
    "tecnologia",
    "ciencia",
    "saude",
    "educacao",
    "carros",
    "natureza",
    "turismo",
    "futebol",
    "basquete",
    "volei",
    "formula-1",
    "tenis",
    "novelas",
    "series",
    "famosos",
    "musica",
    "cinema",
    "reality",
    "humor",
    "receitas",
    "moda",
    "sp",
    "rj",
    "mg",
    "rs",
    "pe",
    "ba",
    "pr",
    "df",
    "am",
    "ce",
    "go",
    "sc",
    "es",
    "pb",
    "agro",
    "loterias",
];

/// Writes a topic's name: a section name, suffixed with `-<n>` after the first 40.
pub(super) fn write_topic_name(out: &mut Vec<u8>, topic: u32) {
    let names = TOPIC_NAMES.len() as u32;
    out.extend_from_slice(TOPIC_NAMES[(topic % names) as usize].as_bytes());
    if topic >= names {
        out.push(b'-');
        write_decimal(out, u64::from(topic / names));
    }
}

/// Writes the article id of breaking-news spike `number`: `<portal>/<topic>/urgente-<number>`.
pub(super) fn write_breaking_article_id(out: &mut Vec<u8>, portal: &str, topic: u16, number: u64) {
    out.extend_from_slice(portal.as_bytes());
    out.push(b'/');
    write_topic_name(out, u32::from(topic));
    out.extend_from_slice(b"/urgente-");
    write_decimal(out, number);
}
