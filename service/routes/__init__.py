"""One router per resource: embed, search, items, health (+ info), metrics, web page."""
