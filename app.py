"""The browser door: `cai app` (or `make run`) starts this file. It lists the pages in the sidebar, the home
page first under its own name, and runs the one the user picked. Each page draws the shared settings
(data folder, database, model) itself, through `pages.setup`.
"""

import streamlit as st

PAGES = [
    st.Page("home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/1_Constitution.py", title="Constitution", icon=":material/gavel:"),
    st.Page("pages/2_Traces.py", title="Traces", icon=":material/search:"),
    st.Page("pages/3_Generate.py", title="Generate", icon=":material/rocket_launch:"),
    st.Page("pages/4_Train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/5_Annotate.py", title="Annotate", icon=":material/rate_review:"),
    st.Page("pages/6_Agreement.py", title="Agreement", icon=":material/handshake:"),
    st.Page("pages/7_Evaluate.py", title="Evaluate", icon=":material/monitoring:"),
]

st.navigation(PAGES).run()
