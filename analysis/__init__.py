"""The analysis of a reader study's answers: a pure library (numpy and scipy, no Django).

The web app, the CSV exports and `analyze_csv` all call this code, so a figure
computed from an exported `answers.csv` is the figure the app shows.
"""
