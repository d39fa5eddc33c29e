//! The front end, compiled into the binary: a fixed table from name to bytes. A request can only
//! pick one of these entries; nothing it sends is ever joined to a filesystem path.

pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The page shell every UI route returns; `app.js` renders the page for the path.
pub const INDEX: &str = include_str!("../../web/index.html");

pub const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/app.js"),
    },
    Asset {
        name: "neuro.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/neuro.js"),
    },
    Asset {
        name: "heads.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/heads.js"),
    },
    Asset {
        name: "patch.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/patch.js"),
    },
    Asset {
        name: "experts.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/experts.js"),
    },
    Asset {
        name: "modules.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/modules.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../../web/favicon.svg"),
    },
];

pub fn get(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}
