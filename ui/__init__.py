"""The browser app's shared parts: page settings and login (`settings`), job controls (`job_controls`),
and text shown safely (`text`). Outside `pages/`, where Streamlit would list each module as a page."""
