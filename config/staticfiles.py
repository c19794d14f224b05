"""The static files' storage in production: WhiteNoise's compressed, hashed names, with the
`import ... from "./x.js"` of ES modules (the labelling page's) rewritten to the hashed names
too, so that a module never loads a stale sibling from a long-lived cache."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    support_js_module_import_aggregation = True
