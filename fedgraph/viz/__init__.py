"""Figures (matplotlib): uniformity, personalized item views, training curves, clusters, the
privacy-utility frontier and its share kept against the population.

Each function returns a :class:`matplotlib.figure.Figure` and does not touch pyplot's global
state; in Jupyter, with the inline backend (``%matplotlib inline``), a figure left as a
cell's last expression is drawn below the cell.
"""
from fedgraph.viz.clusters import plot_clusters
from fedgraph.viz.curves import plot_training_curves
from fedgraph.viz.frontier import plot_frontier, plot_population
from fedgraph.viz.personal import plot_personalized_views
from fedgraph.viz.report import personalized_views, plot_runs
from fedgraph.viz.uniformity import plot_uniformity, project_2d

__all__ = ['plot_clusters', 'plot_training_curves', 'plot_frontier', 'plot_population',
           'plot_personalized_views',
           'personalized_views', 'plot_runs', 'plot_uniformity', 'project_2d']
