//! Keyset paging over UUIDv7 ids, as every domain's list calls do it: the last id of a page is
//! the next page's token, so a page costs one index range scan however deep it is.

use cim_proto::common::{PageRequest, PageResponse};

use super::EdgeError;

/// One page of a list: the rows after `after`, at most `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysetPage {
    pub after: Option<uuid::Uuid>,
    pub limit: u32,
}

impl KeysetPage {
    /// The page a request asks for: size 0 means `default`; above `max` is refused (clients
    /// learn the limit instead of getting a silently shorter page); a token must be one this
    /// service issued.
    pub fn parse(page: Option<PageRequest>, default: u32, max: u32) -> Result<Self, EdgeError> {
        let page = page.unwrap_or_default();
        let limit = match page.page_size {
            0 => default,
            n if n <= max => n,
            n => return Err(EdgeError::invalid("page.page_size", format!("{n} is above the maximum {max}"))),
        };
        let after = match page.page_token.as_str() {
            "" => None,
            token => Some(
                uuid::Uuid::try_parse(token)
                    .map_err(|_| EdgeError::invalid("page.page_token", "not a token this service issued"))?,
            ),
        };
        Ok(Self { after, limit })
    }

    /// Rows to fetch: one more than the page, to know whether another page follows.
    pub fn fetch(&self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// This page's rows (from a query that fetched [`Self::fetch`] rows) and the response that
    /// points at the next page (an empty token after the last).
    pub fn split<T>(&self, mut rows: Vec<T>, id: impl Fn(&T) -> String) -> (Vec<T>, PageResponse) {
        let mut next_page_token = String::new();
        if rows.len() > self.limit as usize {
            rows.truncate(self.limit as usize);
            next_page_token = rows.last().map(id).unwrap_or_default();
        }
        (rows, PageResponse { next_page_token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_parsed_bounded_and_split() {
        let page = KeysetPage::parse(None, 50, 500).unwrap();
        assert_eq!(page, KeysetPage { after: None, limit: 50 });
        let too_big = KeysetPage::parse(Some(PageRequest { page_size: 501, page_token: String::new() }), 50, 500);
        assert!(matches!(too_big, Err(EdgeError::Invalid { ref field, .. }) if field == "page.page_size"));
        let forged = KeysetPage::parse(Some(PageRequest { page_size: 0, page_token: "x".into() }), 50, 500);
        assert!(matches!(forged, Err(EdgeError::Invalid { ref field, .. }) if field == "page.page_token"));
        let page = KeysetPage { after: None, limit: 2 };
        assert_eq!(page.fetch(), 3);
        let (rows, next) = page.split(vec![1, 2, 3], ToString::to_string);
        assert_eq!((rows, next.next_page_token.as_str()), (vec![1, 2], "2"));
        let (rows, next) = page.split(vec![1], ToString::to_string);
        assert_eq!((rows, next.next_page_token.as_str()), (vec![1], ""));
    }
}
