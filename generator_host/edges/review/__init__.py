"""The private review page: held pictures seen (blurred until a click) before they go on
stream, by the streamer in an OBS dock and by moderators through personal links.

auth.py: secrets and the moderators' store; state.py: what the page shows; server.py: the
web server (aiohttp) that turns clicks into the core's review-page events; static/: the
page itself (plain HTML, CSS and JavaScript, no build step). See docs/review.md.
"""
